# bmd's inspection collector: POSIX sh for busybox, sourced by the agent (`. "$BMD_AGENT_LIB/inspect.sh"`),
# then `bmd_inspect_report` prints one JSON object on stdout (the report bmd validates with
# bmd/inspection/report.py: InspectionReport). Nothing here is evaluated from the machine's data: every
# string read from sysfs or a frame goes through bmd_inspect_json (printable ASCII, quote and backslash
# escaped, bounded length).
#
# The report: {"version": 1, "cpu": {"count", "arch", "model"}, "memory": {"total_mib", "physical_mib"},
#   "boot_mode": "uefi"|"bios", "system": {"vendor", "product", "serial"},
#   "disks": [{"name", "size", "model", "vendor", "serial", "wwn", "rotational"}],
#   "nics": [{"name", "mac", "carrier", "speed_mbps", "lldp": null | {"chassis_id", "chassis_id_subtype",
#     "port_id", "port_id_subtype", "system_name", "port_description"}}]}
#
# LLDP: busybox cannot capture frames, so when `tcpdump` is there (the ramdisk carries it, from Debian's
# tcpdump package with its libraries) one capture per NIC runs in parallel, each for at most
# BMD_AGENT_LLDP_WAIT seconds (default 35: switches send LLDP every 30 s) and the first LLDP frame
# (ethertype 0x88cc) is decoded here with od + awk. Without tcpdump, or with BMD_AGENT_LLDP_WAIT=0,
# every "lldp" is null.
#
# Every path is overridable by environment, so tests run this on the host:
#   BMD_AGENT_SYSFS (/sys)  BMD_AGENT_MEMINFO (/proc/meminfo)  BMD_AGENT_CPUINFO (/proc/cpuinfo)
#   BMD_AGENT_ARCH (uname -m)  BMD_AGENT_WORK (/run/bmd-agent)  BMD_AGENT_TCPDUMP (tcpdump from PATH)
#   BMD_AGENT_LLDP_WAIT (s, 35)  BMD_AGENT_LLDP_IFACES (only these NICs are listened on; default all)

# A JSON string (with its quotes) of stdin: printable ASCII only, at most 255 characters of one line.
bmd_inspect_json() {
	tr '\11\12\15' '   ' | tr -cd '\40-\176' | head -c 255 | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' |
		awk 'BEGIN { printf "\"" } { printf "%s", $0 } END { printf "\"" }'
}

# The first readable of the files given, whitespace trimmed, as a JSON string (null when none is).
bmd_inspect_attr() {
	for f in "$@"; do
		if [ -r "$f" ]; then
			v=$(sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$f" 2>/dev/null | head -n 1)
			if [ -n "$v" ]; then
				printf '%s' "$v" | bmd_inspect_json
				return
			fi
		fi
	done
	printf 'null'
}

# A whole number from a file ("null" when missing, unreadable or not a number: a NIC down has no speed).
bmd_inspect_int() {
	v=$(cat "$1" 2>/dev/null | head -n 1 | tr -d ' ')
	case $v in '' | *[!0-9]*) printf 'null' ;; *) printf '%s' "$v" ;; esac
}

bmd_inspect_cpu() {
	cpuinfo=${BMD_AGENT_CPUINFO:-/proc/cpuinfo}
	count=$(grep -c '^processor[[:space:]]*:' "$cpuinfo" 2>/dev/null)
	case $count in '' | *[!0-9]* | 0) count=$(nproc 2>/dev/null || echo 1) ;; esac
	model=$(sed -n -e 's/^model name[[:space:]]*:[[:space:]]*//p' -e 's/^cpu model[[:space:]]*:[[:space:]]*//p' \
		"$cpuinfo" 2>/dev/null | head -n 1)
	arch=${BMD_AGENT_ARCH:-$(uname -m)}
	printf '{"count": %s, "arch": %s, "model": %s}' "$count" "$(printf '%s' "$arch" | bmd_inspect_json)" \
		"$(if [ -n "$model" ]; then printf '%s' "$model" | bmd_inspect_json; else printf 'null'; fi)"
}

# total_mib: MemTotal (what the kernel can use); physical_mib: the online memory blocks (what is
# installed, when the kernel has memory hotplug sysfs), else null.
bmd_inspect_memory() {
	kib=$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\).*/\1/p' "${BMD_AGENT_MEMINFO:-/proc/meminfo}" 2>/dev/null)
	case $kib in '' | *[!0-9]*) total=null ;; *) total=$((kib / 1024)) ;; esac
	physical=null
	mem="$SYSFS_I/devices/system/memory"
	if [ -r "$mem/block_size_bytes" ]; then
		block=$(cat "$mem/block_size_bytes")
		case $block in '' | *[!0-9a-fA-F]*) block="" ;; esac
		online=0
		for b in "$mem"/memory*; do
			[ -r "$b/online" ] || continue
			[ "$(cat "$b/online")" = 1 ] && online=$((online + 1))
		done
		[ -n "$block" ] && [ "$online" -gt 0 ] && physical=$((0x$block / 1048576 * online))
	fi
	printf '{"total_mib": %s, "physical_mib": %s}' "$total" "$physical"
}

# A disk's serial number as plain text ($1: its /sys/block/<name>; nothing when it has none): sysfs
# "serial" (virtio, NVMe) or device/serial, else the SCSI unit serial number VPD page (0x80: a 4-byte
# header, then the serial; SATA and SAS disks behind sd). The deploy agent (bmd-agent.sh sources this
# file) matches the root device hint "serial" against it, so a serial read from a report matches.
bmd_disk_serial() {
	for ds_file in "$1/serial" "$1/device/serial"; do
		[ -r "$ds_file" ] || continue
		ds_v=$(sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$ds_file" 2>/dev/null | head -n 1)
		if [ -n "$ds_v" ]; then
			printf '%s' "$ds_v"
			return 0
		fi
	done
	if [ -r "$1/device/vpd_pg80" ]; then
		tail -c +5 "$1/device/vpd_pg80" 2>/dev/null | tr -cd '\41-\176' | head -c 255
	fi
	return 0
}

# The same as a JSON string, null when there is none.
bmd_inspect_serial() {
	v=$(bmd_disk_serial "$1")
	if [ -n "$v" ]; then printf '%s' "$v" | bmd_inspect_json; else printf 'null'; fi
}

bmd_inspect_disks() {
	sep=""
	printf '['
	for b in "$SYSFS_I"/block/*; do
		[ -e "$b" ] || continue
		name=${b##*/}
		case $name in ram* | loop* | sr* | zram* | fd* | nbd* | dm-* | md*) continue ;; esac
		sectors=$(cat "$b/size" 2>/dev/null)
		case $sectors in '' | *[!0-9]* | 0) continue ;; esac
		rot=$(cat "$b/queue/rotational" 2>/dev/null)
		case $rot in 1) rot=true ;; 0) rot=false ;; *) rot=null ;; esac
		printf '%s{"name": %s, "size": %s, "model": %s, "vendor": %s, "serial": %s, "wwn": %s, "rotational": %s}' \
			"$sep" "$(printf '%s' "$name" | bmd_inspect_json)" "$((sectors * 512))" \
			"$(bmd_inspect_attr "$b/device/model")" "$(bmd_inspect_attr "$b/device/vendor")" \
			"$(bmd_inspect_serial "$b")" "$(bmd_inspect_attr "$b/wwid" "$b/device/wwid")" "$rot"
		sep=", "
	done
	printf ']'
}

# The NICs to report: every entry of class/net but lo and virtual ones without a device (bridges, veth
# peers are kept: tests listen on them).
bmd_inspect_nic_names() {
	for n in "$SYSFS_I"/class/net/*; do
		[ -e "$n" ] || continue
		name=${n##*/}
		[ "$name" = lo ] && continue
		printf '%s\n' "$name"
	done
}

# Decode the first LLDP frame of a pcap file ($1) into the "lldp" JSON object; "null" when there is none.
# pcap: a 24-byte file header, a 16-byte record header, then the Ethernet frame: 6+6 bytes of addresses,
# optional 802.1Q tags (0x8100), ethertype 0x88cc, then TLVs (7-bit type, 9-bit length).
bmd_inspect_lldp_decode() {
	[ -s "$1" ] || {
		printf 'null'
		return
	}
	od -An -v -tx1 "$1" | awk '
	function hex(s,   i, n) { n = 0; s = tolower(s); for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1; return n }
	function str(a, n,   i, s, c) { s = ""; for (i = 0; i < n && i < 255; i++) { c = b[a + i]; if (c >= 32 && c < 127) { ch = sprintf("%c", c); if (ch == "\\" || ch == "\"") ch = "\\" ch; s = s ch } }; return "\"" s "\"" }
	function mac(a,   i, s) { s = ""; for (i = 0; i < 6; i++) s = s (i ? ":" : "") sprintf("%02x", b[a + i]); return "\"" s "\"" }
	function ident(a, n, st) { if ((st == 4 && n == 7) || (st == 3 && n == 7)) return mac(a + 1); return str(a + 1, n - 1) }
	{ for (i = 1; i <= NF; i++) b[nb++] = hex($i) }
	END {
		p = 40 + 12
		while (p + 4 <= nb && b[p] == 129 && b[p + 1] == 0) p += 4
		if (p + 2 > nb || b[p] != 136 || b[p + 1] != 204) { printf "null"; exit }
		p += 2
		chassis = "null"; cst = "null"; port = "null"; pst = "null"; sysname = "null"; pdesc = "null"
		while (p + 2 <= nb) {
			t = int(b[p] / 2); l = (b[p] % 2) * 256 + b[p + 1]; v = p + 2
			if (t == 0 || v + l > nb) break
			if (t == 1 && l >= 2) { cst = b[v]; chassis = ident(v, l, (b[v] == 4) ? 4 : 0) }
			else if (t == 2 && l >= 2) { pst = b[v]; port = ident(v, l, (b[v] == 3) ? 3 : 0) }
			else if (t == 4) pdesc = str(v, l)
			else if (t == 5) sysname = str(v, l)
			p = v + l
		}
		printf "{\"chassis_id\": %s, \"chassis_id_subtype\": %s, \"port_id\": %s, \"port_id_subtype\": %s, \"system_name\": %s, \"port_description\": %s}", chassis, cst, port, pst, sysname, pdesc
	}'
}

# Listen for LLDP on every NIC at once (bounded by BMD_AGENT_LLDP_WAIT); the captures land in $1/<nic>.pcap.
# Promiscuous (no -p): LLDP goes to the multicast 01:80:c2:00:00:0e, which a NIC's receive filter (virtio-net's
# too) drops unless the address was joined; --immediate-mode: no TPACKET_V3 block timeout to wait for.
bmd_inspect_lldp_capture() {
	wait_s=${BMD_AGENT_LLDP_WAIT:-35}
	tcpdump=${BMD_AGENT_TCPDUMP:-$(command -v tcpdump 2>/dev/null || { [ -x /usr/bin/tcpdump ] && echo /usr/bin/tcpdump; })}
	[ "$wait_s" -gt 0 ] 2>/dev/null && [ -n "$tcpdump" ] || return 0
	pids=""
	for name in ${BMD_AGENT_LLDP_IFACES:-$(bmd_inspect_nic_names)}; do
		ip link set "$name" up 2>/dev/null
		timeout "$wait_s" "$tcpdump" -Z root -i "$name" -c 1 -s 1600 --immediate-mode -U -w "$1/$name.pcap" ether proto 0x88cc \
			>"$1/$name.log" 2>&1 &
		pids="$pids $!"
	done
	for pid in $pids; do wait "$pid"; done
}

bmd_inspect_nics() {
	sep=""
	printf '['
	for name in $(bmd_inspect_nic_names); do
		n="$SYSFS_I/class/net/$name"
		carrier=$(cat "$n/carrier" 2>/dev/null)
		case $carrier in 1) carrier=true ;; 0) carrier=false ;; *) carrier=null ;; esac
		printf '%s{"name": %s, "mac": %s, "carrier": %s, "speed_mbps": %s, "lldp": %s}' "$sep" \
			"$(printf '%s' "$name" | bmd_inspect_json)" "$(bmd_inspect_attr "$n/address")" "$carrier" \
			"$(bmd_inspect_int "$n/speed")" "$(bmd_inspect_lldp_decode "$LLDP_DIR/$name.pcap")"
		sep=", "
	done
	printf ']'
}

bmd_inspect_report() {
	SYSFS_I=${BMD_AGENT_SYSFS:-/sys}
	LLDP_DIR="${BMD_AGENT_WORK:-/run/bmd-agent}/lldp"
	rm -rf "$LLDP_DIR"
	mkdir -p "$LLDP_DIR" || return 1
	bmd_inspect_lldp_capture "$LLDP_DIR"
	if [ -d "$SYSFS_I/firmware/efi" ]; then boot_mode=uefi; else boot_mode=bios; fi
	d="$SYSFS_I/class/dmi/id"
	printf '{"version": 1, "cpu": %s, "memory": %s, "boot_mode": "%s", ' "$(bmd_inspect_cpu)" "$(bmd_inspect_memory)" \
		"$boot_mode"
	printf '"system": {"vendor": %s, "product": %s, "serial": %s}, ' "$(bmd_inspect_attr "$d/sys_vendor")" \
		"$(bmd_inspect_attr "$d/product_name")" "$(bmd_inspect_attr "$d/product_serial")"
	printf '"disks": %s, "nics": %s}\n' "$(bmd_inspect_disks)" "$(bmd_inspect_nics)"
}
