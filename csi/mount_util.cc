// Mount system calls and the mount table (see mount_util.h).
#include "csi/mount_util.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "csi/system_error.h"

namespace ephemera::csi {

namespace {

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int value = 0;
      bool octal = true;
      for (size_t j = 1; j <= 3; ++j) {
        if (s[i + j] < '0' || s[i + j] > '7') {
          octal = false;
          break;
        }
        value = value * 8 + (s[i + j] - '0');
      }
      if (octal) {
        out.push_back(static_cast<char>(value));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

}  // namespace

StatusOr<std::vector<MountEntry>> ReadMountInfo() {
  std::ifstream in("/proc/self/mountinfo");
  if (!in) return Status::Internal("cannot read /proc/self/mountinfo");
  std::vector<MountEntry> entries;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, major_minor, root, mount_point, options, word;
    fields >> id >> parent >> major_minor >> root >> mount_point >> options;
    // Optional fields end with a lone "-".
    while (fields >> word && word != "-") {
    }
    std::string fstype, source, super_options;
    fields >> fstype >> source >> super_options;
    entries.push_back(MountEntry{major_minor, Unescape(root), Unescape(mount_point), options,
                                 fstype, Unescape(source), super_options});
  }
  return entries;
}

StatusOr<std::optional<MountEntry>> FindMount(const std::string& path) {
  StatusOr<std::vector<MountEntry>> entries = ReadMountInfo();
  if (!entries.ok()) return entries.status();
  std::optional<MountEntry> found;
  for (MountEntry& entry : *entries) {
    if (entry.mount_point == path) found = std::move(entry);
  }
  return found;
}

StatusOr<bool> DeviceNodeIsBindMounted(const std::string& name) {
  StatusOr<std::vector<MountEntry>> entries = ReadMountInfo();
  if (!entries.ok()) return entries.status();
  for (const MountEntry& entry : *entries) {
    if (entry.fstype == "devtmpfs" && entry.root == "/" + name) return true;
  }
  return false;
}

StatusOr<std::string> DeviceMajorMinor(const std::string& device) {
  struct stat st {};
  if (stat(device.c_str(), &st) != 0) return Status::Internal(ErrnoMessage("stat " + device));
  if (!S_ISBLK(st.st_mode)) return Status::Internal(device + " is not a block device");
  return std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev));
}

bool DeviceSupportsDax(const std::string& device) {
  // By device number: /dev/<vg>/<lv> links to /dev/mapper/<vg>-<lv>, a node whose name is not the
  // kernel's (dm-N) when no udev made it.
  struct stat st {};
  if (stat(device.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) return false;
  std::ifstream in("/sys/dev/block/" + std::to_string(major(st.st_rdev)) + ":" +
                   std::to_string(minor(st.st_rdev)) + "/queue/dax");
  std::string value;
  return in && std::getline(in, value) && value == "1";
}

bool DaxInEffect(const MountEntry& entry) {
  std::istringstream options(entry.super_options);
  std::string option;
  while (std::getline(options, option, ',')) {
    if (option == "dax" || option == "dax=always") return true;
  }
  return false;
}

Status MountFilesystem(const std::string& device, const std::string& target,
                       const std::string& fstype, const std::vector<std::string>& options) {
  static const std::map<std::string, unsigned long> kFlags = {{"ro", MS_RDONLY},
                                                              {"rw", 0},
                                                              {"noexec", MS_NOEXEC},
                                                              {"nosuid", MS_NOSUID},
                                                              {"nodev", MS_NODEV},
                                                              {"noatime", MS_NOATIME},
                                                              {"relatime", MS_RELATIME},
                                                              {"nodiratime", MS_NODIRATIME},
                                                              {"sync", MS_SYNCHRONOUS},
                                                              {"dirsync", MS_DIRSYNC},
                                                              {"defaults", 0}};
  unsigned long flags = 0;
  std::string data;
  for (const std::string& option : options) {
    if (option.empty()) continue;
    if (option.find(',') != std::string::npos || option.find('\0') != std::string::npos) {
      return Status::InvalidArgument("mount option \"" + option.substr(0, 64) +
                                     "\" contains a comma or a NUL byte");
    }
    auto it = kFlags.find(option);
    if (it != kFlags.end()) {
      flags |= it->second;
    } else {
      if (!data.empty()) data += ",";
      data += option;
    }
  }
  if (mount(device.c_str(), target.c_str(), fstype.c_str(), flags,
            data.empty() ? nullptr : data.c_str()) != 0) {
    return Status::Internal(
        ErrnoMessage("mount " + device + " on " + target + " (" + fstype + ")"));
  }
  return Status::Ok();
}

Status BindMount(const std::string& source, const std::string& target, bool read_only) {
  if (mount(source.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0) {
    return Status::Internal(ErrnoMessage("bind mount " + source + " on " + target));
  }
  if (read_only &&
      mount(nullptr, target.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr) != 0) {
    Status status = Status::Internal(ErrnoMessage("remount " + target + " read-only"));
    umount2(target.c_str(), MNT_DETACH);
    return status;
  }
  return Status::Ok();
}

Status Unmount(const std::string& target) {
  if (umount2(target.c_str(), UMOUNT_NOFOLLOW) != 0) {
    if (errno == EINVAL || errno == ENOENT) return Status::Ok();
    return Status::Internal(ErrnoMessage("unmount " + target));
  }
  return Status::Ok();
}

bool IsReadOnly(const MountEntry& entry) {
  std::istringstream options(entry.options);
  std::string option;
  while (std::getline(options, option, ',')) {
    if (option == "ro") return true;
  }
  return false;
}

}  // namespace ephemera::csi
