#!/bin/sh
# fcm initrd: load the kernel modules the guest needs (virtio drivers, overlay, veth,
# nftables NAT), assemble the root filesystem and hand over to its init. Any failure
# ends this script, the kernel panics, and panic=1 reboots, which ends the VMM: a
# clear, fast failure.
#
# With fcm.root=overlay (every VM fcm makes) the root is an overlay: the shared
# base image (label fcm-root, attached read-only) below, the VM's own disk (label
# fcm-data: upper/ and work/) above. Disks are found by label, never by /dev/vdX
# order, and root= (which Firecracker appends for its root drive) is ignored.
# Without it, root= is mounted as it is (a VM made before the overlay).
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
stage() {
	read -r up _ < /proc/uptime
	echo "fcm-initrd: boot ${up}s $1"
}
stage "initrd"
root=/dev/vda
init=/sbin/init
mode=rw
layout=disk
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
	case "$arg" in
	root=*) root=${arg#root=} ;;
	init=*) init=${arg#init=} ;;
	ro) mode=ro ;;
	fcm.root=overlay) layout=overlay ;;
	esac
done
while read -r m; do
	insmod "/lib/modules/$m.ko" || echo "fcm-initrd: insmod $m failed"
done < /lib/modules/order
stage "modules"
# wait_for VAR CMD...: retry CMD (for 5 s) until it succeeds, its output in VAR.
wait_for() {
	var=$1
	shift
	i=0
	until out=$("$@" 2>/dev/null) && [ -n "$out" ]; do
		i=$((i + 1))
		if [ $i -gt 250 ]; then
			echo "fcm-initrd: $* found nothing"
			exit 1
		fi
		usleep 20000
	done
	eval "$var=\$out"
}
if [ "$layout" = overlay ]; then
	wait_for base findfs LABEL=fcm-root
	wait_for data findfs LABEL=fcm-data
	mount -t ext4 -o ro,noload "$base" /base || { echo "fcm-initrd: cannot mount the base $base"; exit 1; }
	mount -t ext4 -o rw,noatime "$data" /rw || { echo "fcm-initrd: cannot mount the vm's disk $data"; exit 1; }
	mount -t overlay overlay -o lowerdir=/base,upperdir=/rw/upper,workdir=/rw/work,redirect_dir=on /newroot ||
		{ echo "fcm-initrd: cannot assemble the root overlay"; exit 1; }
else
	wait_for root sh -c "[ -b $root ] && echo $root"
	mount -t ext4 -o "$mode" "$root" /newroot || { echo "fcm-initrd: cannot mount $root"; exit 1; }
fi
stage "root mounted"
umount /proc
mount --move /dev /newroot/dev || umount /dev
exec switch_root /newroot "$init"
