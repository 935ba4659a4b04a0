#!/bin/sh
# fcm initrd: load the modules the guest needs (virtio drivers, veth, nftables NAT), mount the
# root disk named by root= and hand over to its init. Any failure ends this script,
# the kernel panics, and panic=1 reboots, which ends the VMM: a clear, fast failure.
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
root=/dev/vda
init=/sbin/init
mode=rw
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
	case "$arg" in
	root=*) root=${arg#root=} ;;
	init=*) init=${arg#init=} ;;
	ro) mode=ro ;;
	esac
done
while read -r m; do
	insmod "/lib/modules/$m.ko" || echo "fcm-initrd: insmod $m failed"
done < /lib/modules/order
i=0
while [ ! -b "$root" ]; do
	i=$((i + 1))
	if [ $i -gt 250 ]; then
		echo "fcm-initrd: root device $root did not appear"
		exit 1
	fi
	usleep 20000
done
mount -t ext4 -o "$mode" "$root" /newroot || { echo "fcm-initrd: cannot mount $root"; exit 1; }
umount /proc
mount --move /dev /newroot/dev || umount /dev
exec switch_root /newroot "$init"
