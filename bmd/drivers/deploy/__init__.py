"""The deploy interface and its parts: the ``pxe`` driver, the image cache, the PXE/iPXE writer, the HTTP
file server and a test agent.

- ``driver``: :class:`~bmd.drivers.deploy.driver.PXEDriver`, the ``pxe`` deploy interface
  (``driver.deploy_driver``; entry point group ``bmd.drivers.deploy``) over the writer and the cache.
- ``images``: :class:`~bmd.drivers.deploy.images.ImageCache`, a size-bounded LRU of verified images
  (``checksum`` parses and verifies digests, ``refs`` parses image refs).
- ``pxe``: :class:`~bmd.drivers.deploy.pxe.PXEDeploy`, per-node pxelinux and iPXE files (``spec`` holds the settings,
  the deploy spec and their checks; ``templates`` the file formats and kernel-arg names; ``fsutil`` atomic
  file operations).
- ``http``: an aiohttp sub-app serving ``http_root`` (nothing secret) with Range support.
- ``agent_sim``: plays the deploy ramdisk over the real wire protocol — token lookup, image, callback — and
  documents it (for end-to-end tests and the lab).
"""
