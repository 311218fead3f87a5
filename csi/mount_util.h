// Mounting through the mount(2) / umount2(2) system calls and reading /proc/self/mountinfo.
//
// No mount(8) process is started: request strings (paths, mount flags) never pass through a
// command line.
//
// Thread safety: the functions are safe to call concurrently; the mount table can of course change
// between a FindMount() and the next call, which is why callers serialize per volume.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace ephemera::csi {

struct MountEntry {
  std::string major_minor;  // "7:3"
  std::string root;         // the path inside the filesystem that is mounted, "/" for a whole fs
  std::string mount_point;
  std::string options;  // per-mount options, "rw,relatime"
  std::string fstype;
  std::string source;
  std::string super_options;  // the filesystem's options, "rw,dax=always"
};

StatusOr<std::vector<MountEntry>> ReadMountInfo();

// The topmost mount whose mount point is `path`, if any.
StatusOr<std::optional<MountEntry>> FindMount(const std::string& path);

// Whether the device node /dev/<name> is bind-mounted somewhere (raw block publishing).
StatusOr<bool> DeviceNodeIsBindMounted(const std::string& name);

// "major:minor" of a block device node.
StatusOr<std::string> DeviceMajorMinor(const std::string& device);

// Whether /sys/block/<device>/queue/dax says the device supports DAX.
bool DeviceSupportsDax(const std::string& device);

// Whether the kernel reports the mounted filesystem as using DAX for every file: "dax" or
// "dax=always" among its super options (ext4 and xfs write one of these; "dax=inode" leaves it to
// each file, "dax=never" is off).
bool DaxInEffect(const MountEntry& entry);

// mount(2) of a filesystem. `options` are mount(8)-style: ro, rw, noexec, nosuid, nodev, noatime,
// relatime, nodiratime, sync, dirsync become MS_* flags; the rest go to the filesystem as data.
// INVALID_ARGUMENT for an option with a comma or a NUL byte.
Status MountFilesystem(const std::string& device, const std::string& target,
                       const std::string& fstype, const std::vector<std::string>& options);

// A bind mount of `source` on `target`; read-only when asked (bind, then remount read-only).
Status BindMount(const std::string& source, const std::string& target, bool read_only);

// umount2(target). OK when `target` is not a mount point or does not exist.
Status Unmount(const std::string& target);

// Whether the mount is read-only according to its per-mount options.
bool IsReadOnly(const MountEntry& entry);

}  // namespace ephemera::csi
