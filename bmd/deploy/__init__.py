"""Deploy leaf components: the image cache, the PXE/iPXE writer, the HTTP file server and a test agent.

Layout (everything below is plain files, so a restart finds it as it was):

- ``images``: :class:`~bmd.deploy.images.ImageCache`, a size-bounded LRU of verified images.
- ``pxe``: :class:`~bmd.deploy.pxe.PXEDeploy`, per-node pxelinux and iPXE configs.
- ``http``: an aiohttp sub-app serving ``http_root`` with Range support.
- ``agent_sim``: plays the deploy ramdisk over the real wire protocol (for end-to-end tests and the lab).
"""
