# Guest scenario of test-power-loss.sh: an image on the virtio disk's ext4 served on
# /dev/nbd0 (directio=$DIRECTIO, client blocks of $NBD_BS), and writers of durable numbered
# records that run until the host kills the VM.
source "$VM_LIB"
step "kernel $(uname -r), $(command -v nbdkit) $nbdkit_version, vda logical block $(cat /sys/block/vda/queue/logical_block_size), nbd -b $NBD_BS, directio=$DIRECTIO"
disk_mount /dev/vda /mnt/disk
truncate -s 64M /mnt/disk/loopdio.img
sync  # the image's inode and size; its blocks are allocated by the writes under test
attach /mnt/disk/loopdio.img "$NBD_BS" directio="$DIRECTIO"
step "attached by $ATTACHED_BY"
step "write load"
exec /usr/bin/python3 "$(dirname "$VM_LIB")/records.py" write "$NBD_DEV" "$NBD_BS" "$WRITERS"
