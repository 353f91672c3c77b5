#!/bin/sh
# bmd's deploy agent: a POSIX sh program run by busybox in the deploy ramdisk (PID 1 is ./init).
#
# The protocol (the node's side of bmd/drivers/deploy/agent_sim.py):
#   1. read bmd_node_uuid, bmd_url and BOOTIF from the kernel command line (nothing secret is there);
#   2. DHCP on the interface with the BOOTIF MAC (else the first that is not lo);
#   3. POST <bmd_url>/v1/agent/lookup once, Accept: text/plain -> key=value lines (bmd/api/shell_text.py),
#      read with `read -r`, never evaluated; the token lives only in a shell variable from then on;
#   4. every later call carries X-Agent-Token: download the image (resumed with Range, every transfer
#      bounded by `timeout`), check its checksum, pick the disk by the root-device hints (disks read by
#      inspect.sh's bmd_disk_serial, as inspection reads them), dd, sync;
#      heartbeats {"message": ...} at each stage; the config drive when bmd hands one out;
#   5. POST the callback: {"deployment_id", "address", "error"} (+ "console", the tail of this agent's
#      log, when something failed). Then bmd switches the node to disk boot and reboots it.
# A clean boot (after a delete) is the same boot; the lookup answer says mode=clean and erase=metadata|full:
# instead of 4 the agent erases every disk (clean.sh, bmd_clean), then calls back and bmd powers it off.
# An inspect boot likewise: mode=inspect, inspection_url and lldp_wait; instead of 4 the agent runs the
# collector (inspect.sh, bmd_inspect_report) and POSTs the report to inspection_url, which ends the boot
# (bmd powers it off); a failure goes to the callback as for the others.
#
# The token trade-off: busybox wget takes headers only as arguments, so the token is in the argv of each
# short-lived wget (readable in /proc/<pid>/cmdline by processes on this node, and by nothing else: the
# ramdisk runs no other program and offers no login). It is never printed, never written to a file, and
# never on the command line of a long-running process.
#
# Every path is overridable by environment, so tests run this very script under busybox sh on the host:
#   BMD_AGENT_CMDLINE (/proc/cmdline)  BMD_AGENT_SYSFS (/sys)  BMD_AGENT_DEVDIR (/dev)  BMD_AGENT_MEMINFO
#   BMD_AGENT_WORK (/run/bmd-agent)    BMD_AGENT_LOG ($WORK/agent.log)  BMD_AGENT_LIB (this script's dir)
#   BMD_AGENT_NO_DHCP=1 (skip udhcpc)  BMD_AGENT_ADDRESS (the address reported; default the DHCP lease)
#   BMD_AGENT_TIMEOUT (s per API call, 30)  BMD_AGENT_IMAGE_TIMEOUT (s per download attempt, 900)
#   BMD_AGENT_RETRIES (attempts per transfer, 5)  BMD_AGENT_RETRY_DELAY (s between attempts, 2)
#   BMD_AGENT_LOOKUP_RETRIES (attempts to reach bmd for the lookup, 60)
#   BMD_AGENT_DISK_WAIT (s to wait for a disk to appear, 20)  BMD_AGENT_WGET (the wget to run, wget)

set -u

WORK=${BMD_AGENT_WORK:-/run/bmd-agent}
LOG=${BMD_AGENT_LOG:-$WORK/agent.log}
LIB=${BMD_AGENT_LIB:-$(cd "$(dirname "$0")" && pwd)}
CMDLINE=${BMD_AGENT_CMDLINE:-/proc/cmdline}
SYSFS=${BMD_AGENT_SYSFS:-/sys}
DEVDIR=${BMD_AGENT_DEVDIR:-/dev}
MEMINFO=${BMD_AGENT_MEMINFO:-/proc/meminfo}
T_API=${BMD_AGENT_TIMEOUT:-30}
T_IMAGE=${BMD_AGENT_IMAGE_TIMEOUT:-900}
RETRIES=${BMD_AGENT_RETRIES:-5}
LOOKUP_RETRIES=${BMD_AGENT_LOOKUP_RETRIES:-60} # bmd may be briefly out of reach: nothing is lost by waiting
RETRY_DELAY=${BMD_AGENT_RETRY_DELAY:-2}
DISK_WAIT=${BMD_AGENT_DISK_WAIT:-20}
BMD_AGENT_LIB=$LIB
BMD_AGENT_WORK=$WORK
export BMD_AGENT_LIB BMD_AGENT_WORK

TOKEN=""
DEPLOYMENT_ID=""
CALLBACK_URL=""
HEARTBEAT_URL=""
ADDRESS=${BMD_AGENT_ADDRESS:-}

mkdir -p "$WORK" || exit 1
chmod 700 "$WORK" 2>/dev/null
umask 077

log() {
	line="$(date '+%H:%M:%S') bmd-agent: $*"
	printf '%s\n' "$line" >>"$LOG"
	printf '%s\n' "$line" >&2
}

# Run a command; its output goes (indented) to the log and the console. Returns its status.
run() {
	"$@" >"$WORK/cmd.out" 2>&1
	rc=$?
	if [ -s "$WORK/cmd.out" ]; then
		sed 's/^/  | /' "$WORK/cmd.out" >>"$LOG"
		sed 's/^/  | /' "$WORK/cmd.out" >&2
	fi
	return $rc
}

# A JSON string (with quotes) of stdin: printable ASCII only, backslash, quote and newlines escaped.
json_string() {
	tr '\11\15' '  ' | tr -cd '\12\40-\176' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' |
		awk 'BEGIN { printf "\"" } { printf "%s%s", (NR > 1 ? "\\n" : ""), $0 } END { printf "\"" }'
}

# wget bounded by timeout (busybox 1.35's own -T segfaults). $1: seconds; the rest: wget's arguments.
fetch() {
	t=$1
	shift
	timeout "$t" "${BMD_AGENT_WGET:-wget}" "$@"
}

# POST a JSON body file with the token: $1 URL, $2 file. The answer goes to $WORK/answer.
post_json() {
	run fetch "$T_API" -q -O "$WORK/answer" --header "Content-Type: application/json" \
		--header "X-Agent-Token: $TOKEN" --post-file "$2" "$1"
}

heartbeat() {
	log "$1"
	[ -n "$TOKEN" ] && [ -n "$HEARTBEAT_URL" ] || return 0
	printf '{"message": %s}' "$(printf '%s' "$1" | head -c 1000 | json_string)" >"$WORK/heartbeat.json"
	post_json "$HEARTBEAT_URL" "$WORK/heartbeat.json" || log "heartbeat not accepted (going on)"
}

# Report to bmd: $1 the error ("" for success). On an error, the tail of this agent's log goes too.
callback() {
	if [ -z "$1" ]; then
		err=null
		console=""
	else
		err=$(printf '%s' "$1" | head -c 4000 | json_string)
		console=", \"console\": $(tail -c 60000 "$LOG" | json_string)"
	fi
	printf '{"deployment_id": %s, "address": %s, "error": %s%s}' \
		"$(printf '%s' "$DEPLOYMENT_ID" | json_string)" "$(printf '%s' "${ADDRESS:-}" | json_string)" \
		"$err" "$console" >"$WORK/callback.json"
	deliver "$CALLBACK_URL" "$WORK/callback.json" callback
}

# POST a JSON file to bmd until it is accepted: $1 URL, $2 file, $3 what it is (for the log). Returns 0
# once accepted, 1 when bmd could not be reached in $RETRIES attempts (bmd times this boot out), 2 when
# bmd refused it (sending it again would be refused too).
deliver() {
	attempt=1
	while ! post_json "$1" "$2"; do
		if grep -q "server returned error" "$WORK/cmd.out"; then
			log "bmd refused the $3: $(tail -n 1 "$WORK/cmd.out")"
			return 2
		fi
		if [ "$attempt" -ge "$RETRIES" ]; then
			log "the $3 could not be sent in $attempt attempts: giving up (bmd will time this boot out)"
			return 1
		fi
		attempt=$((attempt + 1))
		sleep "$RETRY_DELAY"
	done
	log "$3 accepted: $(cat "$WORK/answer" 2>/dev/null)"
}

fail() {
	log "ERROR: $*"
	if [ -n "$TOKEN" ] && [ -n "$CALLBACK_URL" ]; then
		callback "$*"
	else
		log "no token yet: nothing can be reported to bmd (it times the deploy out)"
	fi
	exit 1
}

# --- 1. identity and bmd's URL from the kernel command line --------------------------------------------

NODE_UUID=""
BMD_URL=""
BOOTIF=""
read_cmdline() {
	[ -r "$CMDLINE" ] || fail "cannot read the kernel command line $CMDLINE"
	for arg in $(cat "$CMDLINE"); do
		case $arg in
		bmd_node_uuid=*) NODE_UUID=${arg#*=} ;;
		bmd_url=*) BMD_URL=${arg#*=} ;;
		BOOTIF=*) BOOTIF=${arg#*=} ;;
		esac
	done
	[ -n "$NODE_UUID" ] || fail "no bmd_node_uuid= on the kernel command line"
	[ -n "$BMD_URL" ] || fail "no bmd_url= on the kernel command line"
	BMD_URL=${BMD_URL%/}
	# BOOTIF=01-aa-bb-cc-dd-ee-ff (pxelinux/iPXE): the type byte, then the MAC with dashes.
	MAC=""
	if [ -n "$BOOTIF" ]; then
		MAC=$(printf '%s' "${BOOTIF#01-}" | tr 'A-F-' 'a-f:')
	fi
}

# --- 2. network --------------------------------------------------------------------------------------------

find_interface() {
	first=""
	for dev in "$SYSFS"/class/net/*; do
		[ -e "$dev" ] || continue
		name=${dev##*/}
		[ "$name" = lo ] && continue
		[ -n "$first" ] || first=$name
		addr=$(cat "$dev/address" 2>/dev/null)
		if [ -n "$MAC" ] && [ "$addr" = "$MAC" ]; then
			echo "$name"
			return
		fi
	done
	echo "$first"
}

dhcp() {
	if [ "${BMD_AGENT_NO_DHCP:-0}" = 1 ]; then
		log "DHCP skipped (BMD_AGENT_NO_DHCP=1)"
		return
	fi
	iface=""
	n=0
	while [ -z "$iface" ] && [ "$n" -lt "$DISK_WAIT" ]; do # a NIC's driver may still be probing
		iface=$(find_interface)
		[ -n "$iface" ] || sleep 1
		n=$((n + 1))
	done
	[ -n "$iface" ] || fail "no network interface found (BOOTIF ${MAC:-not given})"
	log "DHCP on $iface (BOOTIF ${MAC:-not given})"
	ip link set "$iface" up 2>/dev/null
	attempt=1
	while ! run udhcpc -i "$iface" -f -q -n -t 5 -T 3 -s "$LIB/udhcpc.script"; do
		[ "$attempt" -ge "$RETRIES" ] && fail "no DHCP answer on $iface after $attempt attempts"
		attempt=$((attempt + 1))
	done
	[ -n "$ADDRESS" ] || ADDRESS=$(cat "$WORK/address" 2>/dev/null)
	log "address ${ADDRESS:-unknown}"
}

# --- 3. lookup -----------------------------------------------------------------------------------------

IMAGE_URL=""
IMAGE_CHECKSUM=""
IMAGE_SIZE=""
CONFIG_DRIVE_URL=""
INSPECTION_URL=""
LLDP_WAIT=""
MODE=deploy
ERASE=metadata
H_SIZE="" H_MODEL="" H_VENDOR="" H_SERIAL="" H_WWN="" H_NAME=""

lookup() {
	body=$(printf '{"node_uuid": %s, "mac": %s}' "$(printf '%s' "$NODE_UUID" | json_string)" \
		"$(if [ -n "$MAC" ]; then printf '%s' "$MAC" | json_string; else printf null; fi)")
	answer="$WORK/lookup"
	attempt=1
	while :; do
		rm -f "$answer"
		run fetch "$T_API" -q -O "$answer" --header "Content-Type: application/json" \
			--header "Accept: text/plain" --post-data "$body" "$BMD_URL/v1/agent/lookup" && break
		rm -f "$answer"
		# bmd answered (a refusal): a second lookup would be refused too, and fails the deploy.
		grep -q "server returned error" "$WORK/cmd.out" && fail "bmd refused the lookup: $(tail -n 1 "$WORK/cmd.out")"
		[ "$attempt" -ge "$LOOKUP_RETRIES" ] && fail "cannot reach bmd at $BMD_URL: $(tail -n 1 "$WORK/cmd.out")"
		attempt=$((attempt + 1))
		sleep "$RETRY_DELAY"
	done
	while IFS= read -r line; do
		key=${line%%=*}
		value=${line#*=}
		case $key in
		token) TOKEN=$value ;;
		deployment_id) DEPLOYMENT_ID=$value ;;
		image_url) IMAGE_URL=$value ;;
		image_checksum) IMAGE_CHECKSUM=$value ;;
		image_size) IMAGE_SIZE=$value ;;
		heartbeat_url) HEARTBEAT_URL=$value ;;
		callback_url) CALLBACK_URL=$value ;;
		config_drive_url) CONFIG_DRIVE_URL=$value ;;
		mode) MODE=$value ;;
		inspection_url) INSPECTION_URL=$value ;;
		lldp_wait) LLDP_WAIT=$value ;;
		erase) ERASE=$value ;;
		root_device_size) H_SIZE=$value ;;
		root_device_model) H_MODEL=$value ;;
		root_device_vendor) H_VENDOR=$value ;;
		root_device_serial) H_SERIAL=$value ;;
		root_device_wwn) H_WWN=$value ;;
		root_device_name) H_NAME=$value ;;
		root_device_*) UNKNOWN_HINT=${key#root_device_} ;;
		esac
	done <"$answer"
	rm -f "$answer" # it held the token
	[ -n "$TOKEN" ] || fail "bmd's lookup answer has no token"
	[ -n "$CALLBACK_URL" ] || fail "bmd's lookup answer lacks callback_url"
	case $MODE in
	deploy) [ -n "$IMAGE_URL" ] || fail "bmd's lookup answer lacks image_url" ;;
	clean) ;;
	inspect) [ -n "$INSPECTION_URL" ] || fail "bmd's lookup answer lacks inspection_url" ;;
	*) fail "bmd's lookup answer has an unknown mode '$MODE'" ;;
	esac
	log "token received for deployment $DEPLOYMENT_ID (image ${IMAGE_SIZE:-?} bytes)"
	[ -z "${UNKNOWN_HINT:-}" ] || fail "unsupported root device hint: $UNKNOWN_HINT"
	case $IMAGE_SIZE in '' | *[!0-9]*) IMAGE_SIZE="" ;; esac
}

# --- 4. image ------------------------------------------------------------------------------------------

# The image is downloaded into memory (then written): refuse at once an image that cannot fit.
check_memory() {
	[ -n "$IMAGE_SIZE" ] && [ -r "$MEMINFO" ] || return 0
	avail_kb=$(awk '$1 == "MemAvailable:" { print $2 }' "$MEMINFO")
	case $avail_kb in '' | *[!0-9]*) return 0 ;; esac
	need_kb=$((IMAGE_SIZE / 1024 + 32768)) # the image and 32 MiB to work in
	[ "$avail_kb" -ge "$need_kb" ] ||
		fail "the image ($IMAGE_SIZE bytes) does not fit in this node's memory (${avail_kb} KiB available, ${need_kb} KiB needed)"
}

size_of() { if [ -e "$1" ]; then wc -c <"$1" | tr -d ' '; else echo 0; fi; }

download() { # $1 URL, $2 destination: resumed with -c (Range) after a cut, bounded attempts.
	attempt=1
	while :; do
		have=$(size_of "$2")
		if [ -n "$IMAGE_SIZE" ] && [ "$have" -ge "$IMAGE_SIZE" ] && [ "$have" -gt 0 ]; then
			return 0
		fi
		[ "$have" -gt 0 ] && heartbeat "resuming the download at byte $have (attempt $attempt)"
		if run fetch "$T_IMAGE" -c -q --header "X-Agent-Token: $TOKEN" -O "$2" "$1"; then
			[ -z "$IMAGE_SIZE" ] && return 0
			[ "$(size_of "$2")" = "$IMAGE_SIZE" ] && return 0
		fi
		grep -q "server returned error" "$WORK/cmd.out" && [ "$(size_of "$2")" = 0 ] &&
			fail "bmd refused the download of $1: $(tail -n 1 "$WORK/cmd.out")"
		[ "$attempt" -ge "$RETRIES" ] &&
			fail "downloading $1 failed after $attempt attempts ($(size_of "$2") of ${IMAGE_SIZE:-?} bytes)"
		attempt=$((attempt + 1))
		sleep "$RETRY_DELAY"
	done
}

verify() { # $1 file, $2 "<algorithm>:<hex>"
	algorithm=${2%%:*}
	expected=$(printf '%s' "${2#*:}" | tr 'A-F' 'a-f')
	case $algorithm in
	md5 | sha256 | sha512) ;;
	*) fail "unsupported image checksum ${2:-none given} (md5, sha256 and sha512 are)" ;;
	esac
	got=$("${algorithm}sum" "$1" | cut -d ' ' -f 1)
	[ "$got" = "$expected" ] || fail "image checksum mismatch: expected $algorithm:$expected, got $algorithm:$got"
	log "image checksum ok ($algorithm)"
}

# --- 5. the root disk ------------------------------------------------------------------------------------

attr() { # the first readable of the files given, whitespace trimmed
	for f in "$@"; do
		if [ -r "$f" ]; then
			sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$f" | head -n 1
			return
		fi
	done
}

lower() { printf '%s' "$1" | tr 'A-Z' 'a-z'; }

size_matches() { # $1 disk GiB, $2 the hint: "N" or "<op> N" with op one of == >= <= > < !=
	set -- "$1" $2
	if [ $# -eq 2 ]; then op="==" want=$2; else op=$2 want=$3; fi
	case $want in '' | *[!0-9]*) fail "root device hint size must be a whole number of GiB, got '$H_SIZE'" ;; esac
	case $op in
	"==" | "=") [ "$1" -eq "$want" ] ;;
	">=") [ "$1" -ge "$want" ] ;;
	"<=") [ "$1" -le "$want" ] ;;
	">") [ "$1" -gt "$want" ] ;;
	"<") [ "$1" -lt "$want" ] ;;
	"!=") [ "$1" -ne "$want" ] ;;
	*) fail "root device hint size: unknown operator '$op'" ;;
	esac
}

# The machine's disks, one sysfs name per line: no RAM, loop, optical, zram, floppy or nbd device, none empty.
list_disks() {
	for b in "$SYSFS"/block/*; do
		[ -e "$b" ] || continue
		name=${b##*/}
		case $name in ram* | loop* | sr* | zram* | fd* | nbd*) continue ;; esac
		sectors=$(attr "$b/size")
		case $sectors in '' | *[!0-9]* | 0) continue ;; esac
		echo "$name"
	done
}

DISK=""
DISK_BYTES=0
choose_disk() {
	seen=""
	n=0
	while :; do
		for name in $(list_disks); do
			b="$SYSFS/block/$name"
			bytes=$(($(attr "$b/size") * 512))
			gib=$((bytes / 1073741824))
			model=$(attr "$b/device/model")
			vendor=$(attr "$b/device/vendor")
			serial=$(bmd_disk_serial "$b") # inspect.sh: sysfs serial, else the SCSI VPD page 0x80
			wwn=$(attr "$b/wwid" "$b/device/wwid")
			seen="$seen $name(${gib}GiB model='$model' vendor='$vendor' serial='$serial' wwn='$wwn')"
			[ -z "$H_NAME" ] || [ "${H_NAME##*/}" = "$name" ] || continue
			[ -z "$H_SIZE" ] || size_matches "$gib" "$H_SIZE" || continue
			[ -z "$H_MODEL" ] || [ "$(lower "$H_MODEL")" = "$(lower "$model")" ] || continue
			[ -z "$H_VENDOR" ] || [ "$(lower "$H_VENDOR")" = "$(lower "$vendor")" ] || continue
			[ -z "$H_SERIAL" ] || [ "$H_SERIAL" = "$serial" ] || continue
			[ -z "$H_WWN" ] || [ "$(lower "$H_WWN")" = "$(lower "$wwn")" ] || [ "$(lower "$H_WWN")" = "$(lower "${wwn#*.}")" ] ||
				continue
			DISK="$DEVDIR/$name"
			DISK_BYTES=$bytes
			log "root disk $DISK: $bytes bytes, model '$model', serial '$serial'"
			return
		done
		[ -n "$seen" ] && break # disks are there, none matches
		[ "$n" -ge "$DISK_WAIT" ] && break
		n=$((n + 1))
		sleep 1 # the disk driver may still be probing
	done
	hints="size='$H_SIZE' model='$H_MODEL' vendor='$H_VENDOR' serial='$H_SERIAL' wwn='$H_WWN' name='$H_NAME'"
	fail "no disk matches the root device hints ($hints); disks seen:${seen:- none}"
}

write_image() { # $1 the image file
	size=$(size_of "$1")
	[ "$size" -le "$DISK_BYTES" ] || fail "the image ($size bytes) does not fit on $DISK ($DISK_BYTES bytes)"
	[ -w "$DISK" ] || fail "cannot write to $DISK"
	run dd if="$1" of="$DISK" bs=1M conv=notrunc,fsync || fail "writing the image to $DISK failed"
	sync
}

config_drive() {
	[ -n "$CONFIG_DRIVE_URL" ] || return 0
	heartbeat "writing the config drive"
	iso="$WORK/configdrive.iso"
	IMAGE_SIZE="" # the config drive's size is not announced: the download ends when wget says so
	download "$CONFIG_DRIVE_URL" "$iso"
	[ -r "$LIB/configdrive.sh" ] || fail "a config drive was requested but $LIB/configdrive.sh is missing"
	. "$LIB/configdrive.sh" || fail "cannot load $LIB/configdrive.sh"
	bmd_configdrive_write "$DISK" "$iso" >"$WORK/cmd.out" 2>&1
	rc=$?
	sed 's/^/  | /' "$WORK/cmd.out" >>"$LOG"
	[ "$rc" -eq 0 ] || fail "writing the config drive to $DISK failed: $(tail -n 3 "$WORK/cmd.out" | tr '\n' ' ')"
	rm -f "$iso"
	sync
}

# The inspect boot: the collector's report goes to bmd, which stores and applies it and powers this node off.
inspect() {
	[ -r "$LIB/inspect.sh" ] || fail "bmd asked for an inspection but $LIB/inspect.sh is missing"
	. "$LIB/inspect.sh" || fail "cannot load $LIB/inspect.sh"
	case $LLDP_WAIT in '' | *[!0-9]*) LLDP_WAIT=35 ;; esac
	BMD_AGENT_LLDP_WAIT=${BMD_AGENT_LLDP_WAIT:-$LLDP_WAIT} # the environment (tests) wins over bmd's answer
	export BMD_AGENT_LLDP_WAIT
	heartbeat "agent up at ${ADDRESS:-unknown address}: inspecting (LLDP: ${BMD_AGENT_LLDP_WAIT} s per NIC)"
	bmd_inspect_report >"$WORK/report.json" 2>"$WORK/cmd.out" || {
		sed 's/^/  | /' "$WORK/cmd.out" >>"$LOG"
		fail "the inspection collector failed: $(tail -n 3 "$WORK/cmd.out" | tr '\n' ' ')"
	}
	log "report: $(wc -c <"$WORK/report.json" | tr -d ' ') bytes"
	deliver "$INSPECTION_URL" "$WORK/report.json" "inspection report"
	case $? in
	1) exit 1 ;;
	2) fail "bmd refused the inspection report: $(tail -n 1 "$WORK/cmd.out")" ;;
	esac
	log "inspection done: bmd powers this node off"
}

main() {
	log "starting (work dir $WORK)"
	read_cmdline
	log "node $NODE_UUID, bmd at $BMD_URL"
	dhcp
	lookup
	if [ "$MODE" = clean ]; then
		[ -r "$LIB/clean.sh" ] || fail "bmd asked for a clean but $LIB/clean.sh is missing"
		. "$LIB/clean.sh" || fail "cannot load $LIB/clean.sh"
		heartbeat "agent up at ${ADDRESS:-unknown address}: cleaning ($ERASE)"
		bmd_clean "$ERASE"
		heartbeat "disks erased ($ERASE):$CLEANED_DISKS; calling back"
		callback "" || exit 1
		log "clean done: bmd powers this node off"
		exit 0
	fi
	if [ "$MODE" = inspect ]; then
		inspect
		exit 0
	fi
	# how disks are read (bmd_disk_serial), shared with the inspection collector; before the download
	[ -r "$LIB/inspect.sh" ] || fail "the root device hints need $LIB/inspect.sh, which is missing"
	. "$LIB/inspect.sh" || fail "cannot load $LIB/inspect.sh"
	check_memory
	heartbeat "agent up at ${ADDRESS:-unknown address}: downloading the image"
	image="$WORK/image"
	download "$IMAGE_URL" "$image"
	heartbeat "image downloaded: $(size_of "$image") bytes; checking the checksum"
	verify "$image" "$IMAGE_CHECKSUM"
	choose_disk
	heartbeat "writing the image to $DISK"
	write_image "$image"
	rm -f "$image"
	config_drive
	heartbeat "image written to $DISK: calling back"
	callback "" || exit 1
	log "deploy done: bmd reboots this node"
}

main "$@"
