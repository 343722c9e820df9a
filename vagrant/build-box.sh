#!/bin/bash
# Build a vagrant-libvirt box of Debian 12 from a debootstrap rootfs tarball.
#
#   sudo vagrant/build-box.sh ROOTFS.tar OUT.box
#
# The box is for a lab with no internet and no public box registry: the
# opt-in test tests/test_vagrant_boot.py builds one from the rootfs that
# tests/nspawn.py caches, then boots the lab on it. What goes in:
#   - the rootfs, plus the kernel, openssh-server, sudo, rsync (the lab's synced
#     folder), tcpdump (the README's "watch the ports hop") and libcap2-bin
#     (to give ping back its cap_net_raw), fetched with apt
#     inside systemd-nspawn while the image is built (the VMs never reach a
#     mirror);
#   - the user vagrant with Vagrant's well-known insecure key and password-less
#     sudo, which is what `vagrant up` expects of any box (it swaps the key for
#     a fresh one on first boot);
#   - systemd-networkd taking eth0 by DHCP, the interface Vagrant reaches the
#     VM on; Vagrant writes its own networkd files for the private network;
#   - an empty machine-id and no ssh host keys, so each VM makes its own on
#     first boot (three VMs with one machine-id would get one DHCP lease).
# The disk is a single ext4 filesystem with no partition table or bootloader:
# libvirt boots the kernel and initrd shipped inside the box directly
# (the box's Vagrantfile sets kernel, initrd and cmd_line), so building needs
# neither a loop device nor grub. mkfs.ext4 -d fills the filesystem from a
# directory without mounting it.
set -euo pipefail

# gcc ... libssl-dev: install.sh builds the data path's native part with them.
readonly EXTRA_PACKAGES=(linux-image-amd64 openssh-server sudo rsync tcpdump
    libcap2-bin gcc libc6-dev python3-dev libssl-dev)
readonly DISK_SIZE_GB=4
readonly INSECURE_KEY_CANDIDATES=(
    /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub
    /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub
)

say() { printf 'build-box.sh: %s\n' "$*"; }
die() { printf 'build-box.sh: %s\n' "$*" >&2; exit 1; }
usage_error() { printf 'build-box.sh: %s\n' "$*" >&2; exit 2; }

insecure_key() {
    local key
    for key in "${INSECURE_KEY_CANDIDATES[@]}"; do
        [[ -f $key ]] && { printf '%s\n' "$key"; return; }
    done
    die "Vagrant's insecure public key (keys/vagrant.pub) not found; install vagrant."
}

add_packages() {
    local root=$1
    # No service may start while the image is built: its network is this host's.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    systemd-nspawn --quiet --register=no --keep-unit --resolv-conf=replace-host \
        --directory="$root" /bin/sh -c "
            set -e
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends ${EXTRA_PACKAGES[*]}
            apt-get clean
            # The rootfs tarball keeps no xattrs, so ping lost the file
            # capability Debian gives it; without it only root can ping.
            setcap cap_net_raw+p /usr/bin/ping
            systemctl enable systemd-networkd.service" >/dev/null
    rm -f "$root/usr/sbin/policy-rc.d"
}

add_vagrant_user() {
    local root=$1 key=$2
    chroot "$root" useradd --create-home --shell /bin/bash vagrant
    install -d -m 0700 "$root/home/vagrant/.ssh"
    install -m 0600 "$key" "$root/home/vagrant/.ssh/authorized_keys"
    # By name, inside: the uid is whatever useradd picked in the rootfs.
    chroot "$root" chown -R vagrant:vagrant /home/vagrant/.ssh
    printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' \
        >"$root/etc/sudoers.d/vagrant"
    chmod 0440 "$root/etc/sudoers.d/vagrant"
}

configure_boot() {
    local root=$1
    printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' >"$root/etc/fstab"
    printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' \
        >"$root/etc/systemd/network/99-vagrant-eth0.network"
    # Host keys are made at first boot, per VM, before sshd checks its config:
    # Debian's unit already runs `sshd -t`, which fails with no host keys, so
    # the drop-in empties the list and puts ssh-keygen first.
    rm -f "$root"/etc/ssh/ssh_host_*
    mkdir -p "$root/etc/systemd/system/ssh.service.d"
    printf '[Service]\nExecStartPre=\nExecStartPre=%s\nExecStartPre=%s\n' \
        '/usr/bin/ssh-keygen -A' '/usr/sbin/sshd -t' \
        >"$root/etc/systemd/system/ssh.service.d/host-keys.conf"
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    printf 'debian12\n' >"$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 debian12\n' >"$root/etc/hosts"
}

write_box_files() {
    local root=$1 dir=$2
    cp -L "$root/vmlinuz" "$dir/vmlinuz"
    cp -L "$root/initrd.img" "$dir/initrd.img"
    printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' \
        "$DISK_SIZE_GB" >"$dir/metadata.json"
    # Vagrant loads this file with Kernel.load, so __dir__ is the box's directory.
    cat >"$dir/Vagrantfile" <<'RUBY'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.kernel = File.join(__dir__, "vmlinuz")
    libvirt.initrd = File.join(__dir__, "initrd.img")
    libvirt.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
  end
end
RUBY
}

make_disk() {
    local root=$1 dir=$2
    truncate -s "${DISK_SIZE_GB}G" "$dir/disk.raw"
    mkfs.ext4 -q -L root -d "$root" "$dir/disk.raw"
    qemu-img convert -O qcow2 "$dir/disk.raw" "$dir/box.img"
    rm -f "$dir/disk.raw"
}

main() {
    (($# == 2)) || usage_error "usage: build-box.sh ROOTFS.tar OUT.box"
    local rootfs=$1 out=$2 key work
    [[ $EUID -eq 0 ]] || usage_error "run as root: the rootfs holds root-owned files."
    [[ -f $rootfs ]] || usage_error "$rootfs: no such rootfs tarball."
    local tool
    for tool in systemd-nspawn mkfs.ext4 qemu-img tar chroot; do
        command -v "$tool" >/dev/null || die "$tool not found; install it."
    done
    key=$(insecure_key)
    work=$(mktemp -d "$(dirname "$out")/build-box.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the path is fixed from here on
    trap "rm -rf '$work'" EXIT
    mkdir "$work/root" "$work/box"
    tar -C "$work/root" -xf "$rootfs"
    say "adding ${EXTRA_PACKAGES[*]}"
    add_packages "$work/root"
    add_vagrant_user "$work/root" "$key"
    configure_boot "$work/root"
    write_box_files "$work/root" "$work/box"
    say "making the disk image"
    make_disk "$work/root" "$work/box"
    tar -C "$work/box" -cf "$work/out.box" \
        metadata.json Vagrantfile box.img vmlinuz initrd.img
    # A rename is atomic: an interrupted build leaves no half-written box.
    mv "$work/out.box" "$out"
    say "wrote $out"
}

main "$@"
