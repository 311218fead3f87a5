// Volume health checks (see volume_health.h).
#include "csi/volume_health.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>

#include "csi/system_error.h"

namespace ephemera::csi {

namespace {

std::string ReadLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return "";
  return line;
}

void Append(std::string& problems, const std::string& problem) {
  if (problem.empty()) return;
  if (!problems.empty()) problems += "; ";
  problems += problem;
}

// The kernel's name of the block device ("loop3", "dm-0"), "" when unknown.
std::string KernelName(const std::string& major_minor) {
  std::error_code ec;
  std::filesystem::path link = std::filesystem::read_symlink("/sys/dev/block/" + major_minor, ec);
  return ec ? "" : link.filename().string();
}

// Superblock options start with "ro" or "rw".
bool SuperReadOnly(const MountEntry& mount) {
  return mount.super_options == "ro" || mount.super_options.starts_with("ro,");
}

}  // namespace

std::string LoopBackingProblem(const std::string& major_minor) {
  std::string file = ReadLine("/sys/dev/block/" + major_minor + "/loop/backing_file");
  constexpr std::string_view kDeleted = " (deleted)";
  if (!file.ends_with(kDeleted)) return "";
  file.resize(file.size() - kDeleted.size());
  std::string name = KernelName(major_minor);
  return "the volume's backing file " + file + " was deleted: loop device /dev/" +
         (name.empty() ? major_minor : name) +
         " still holds it, and its data is lost when the volume is unmounted";
}

std::string FilesystemProblem(const std::string& volume_path, const MountEntry& mount,
                              const std::string& major_minor) {
  std::string problems;
  // A filesystem that was shut down (xfs after a metadata error, ext4 after EXT4_IOC_SHUTDOWN)
  // still answers statfs and keeps its rw flags, but fails every open and directory read.
  int fd = open(volume_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == EIO) {
      Append(problems, "the filesystem fails I/O (" + ErrnoMessage("open " + volume_path) +
                           "): it was shut down after an error");
    }
  } else {
    char buffer[512];
    if (syscall(SYS_getdents64, fd, buffer, sizeof(buffer)) < 0 && errno == EIO) {
      Append(problems, "the filesystem fails I/O (" + ErrnoMessage("reading " + volume_path) +
                           "): it was shut down after an error");
    }
    close(fd);
  }
  // The stage mounts read-write (a read-only publish is a read-only bind mount over a read-write
  // filesystem): a read-only superblock under a read-write mount was made so afterwards.
  if (SuperReadOnly(mount) && !IsReadOnly(mount)) {
    Append(problems,
           "the filesystem is read-only (remounted after an error or by hand) while volume_path "
           "is mounted read-write: writes fail");
  }
  if (mount.fstype == "ext4") {
    std::string name = KernelName(major_minor);
    std::string count = name.empty() ? "" : ReadLine("/sys/fs/ext4/" + name + "/errors_count");
    if (!count.empty() && count != "0") {
      std::string function = ReadLine("/sys/fs/ext4/" + name + "/last_error_func");
      Append(problems, "ext4 has recorded " + count + " error(s)" +
                           (function.empty() ? "" : " (the last in " + function + ")") +
                           "; the kernel log has them, e2fsck repairs the filesystem");
    }
  }
  return problems;
}

}  // namespace ephemera::csi
