// Loop device ioctls (see loop_device.h).
#include "csi/backends/loop_device.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "csi/mount_util.h"
#include "csi/system_error.h"

namespace ephemera::csi {

namespace {

constexpr std::string_view kDeletedSuffix = " (deleted)";

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

std::string ReadFirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

}  // namespace

StatusOr<std::string> AttachLoop(const std::string& file) {
  Fd backing(open(file.c_str(), O_RDWR | O_CLOEXEC));
  if (backing.get() < 0) return Status::Internal(ErrnoMessage("open " + file));
  Fd control(open("/dev/loop-control", O_RDWR | O_CLOEXEC));
  if (control.get() < 0) return Status::Internal(ErrnoMessage("open /dev/loop-control"));
  for (int attempt = 0; attempt < 32; ++attempt) {
    int index = ioctl(control.get(), LOOP_CTL_GET_FREE);
    if (index < 0) return Status::Internal(ErrnoMessage("LOOP_CTL_GET_FREE"));
    std::string device = "/dev/loop" + std::to_string(index);
    Fd loop(open(device.c_str(), O_RDWR | O_CLOEXEC));
    if (loop.get() < 0) {
      if (errno == ENOENT) continue;  // udev or devtmpfs not there yet; ask again
      return Status::Internal(ErrnoMessage("open " + device));
    }
    loop_config config{};
    config.fd = static_cast<__u32>(backing.get());
    config.block_size = 4096;
    std::strncpy(reinterpret_cast<char*>(config.info.lo_file_name), file.c_str(), LO_NAME_SIZE - 1);
    if (ioctl(loop.get(), LOOP_CONFIGURE, &config) == 0) return device;
    if (errno == EBUSY) continue;  // another process took it first
    std::string what = "LOOP_CONFIGURE " + device;
    what.append(" for ").append(file);
    return Status::Internal(ErrnoMessage(what));
  }
  return Status::Unavailable("no free loop device after 32 attempts");
}

namespace {

// Every attached loop device with its backing file.
StatusOr<std::vector<LoopInfo>> ListLoops() {
  std::vector<LoopInfo> loops;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/sys/block", ec)) {
    std::string name = entry.path().filename().string();
    if (!name.starts_with("loop")) continue;
    std::string backing = ReadFirstLine(entry.path().string() + "/loop/backing_file");
    if (backing.empty()) continue;
    LoopInfo info;
    info.device = "/dev/" + name;
    if (backing.ends_with(kDeletedSuffix)) {
      backing.resize(backing.size() - kDeletedSuffix.size());
      info.deleted = true;
    }
    info.file = backing;
    loops.push_back(std::move(info));
  }
  if (ec) return Status::Internal("listing /sys/block: " + ec.message());
  return loops;
}

}  // namespace

StatusOr<std::vector<std::string>> FindLoopsForFile(const std::string& file) {
  StatusOr<std::vector<LoopInfo>> loops = ListLoops();
  if (!loops.ok()) return loops.status();
  std::vector<std::string> devices;
  for (const LoopInfo& loop : *loops) {
    if (loop.file == file) devices.push_back(loop.device);
  }
  return devices;
}

std::string LoopBackingFile(const std::string& device) {
  constexpr std::string_view kPrefix = "/dev/loop";
  if (!device.starts_with(kPrefix) || device.size() == kPrefix.size() ||
      device.find_first_not_of("0123456789", kPrefix.size()) != std::string::npos) {
    return "";
  }
  return ReadFirstLine("/sys/block/" + device.substr(5) + "/loop/backing_file");
}

StatusOr<std::vector<LoopInfo>> ListLoopsInDir(const std::string& dir) {
  StatusOr<std::vector<LoopInfo>> loops = ListLoops();
  if (!loops.ok()) return loops.status();
  std::vector<LoopInfo> in_dir;
  for (LoopInfo& loop : *loops) {
    if (std::filesystem::path(loop.file).parent_path() == std::filesystem::path(dir)) {
      in_dir.push_back(std::move(loop));
    }
  }
  return in_dir;
}

StatusOr<bool> LoopInUse(const std::string& device) {
  struct stat st {};
  if (stat(device.c_str(), &st) != 0) {
    if (errno == ENOENT) return false;
    return Status::Internal(ErrnoMessage("stat " + device));
  }
  // A mounted filesystem holds an exclusive claim: O_EXCL fails with EBUSY.
  int fd = open(device.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
  if (fd < 0) {
    if (errno == EBUSY) return true;
    return Status::Internal(ErrnoMessage("open " + device));
  }
  close(fd);
  // A bind mount of the device node (raw block volumes) holds no claim: look for it.
  StatusOr<bool> bound = DeviceNodeIsBindMounted(std::filesystem::path(device).filename().string());
  if (!bound.ok()) return bound.status();
  return *bound;
}

Status DetachLoop(const std::string& device) {
  Fd loop(open(device.c_str(), O_RDWR | O_CLOEXEC));
  if (loop.get() < 0) {
    if (errno == ENOENT || errno == ENXIO) return Status::Ok();
    return Status::Internal(ErrnoMessage("open " + device));
  }
  if (ioctl(loop.get(), LOOP_CLR_FD, 0) != 0 && errno != ENXIO) {
    return Status::Internal(ErrnoMessage("LOOP_CLR_FD " + device));
  }
  return Status::Ok();
}

Status RefreshLoopCapacity(const std::string& device) {
  Fd loop(open(device.c_str(), O_RDWR | O_CLOEXEC));
  if (loop.get() < 0) return Status::Internal(ErrnoMessage("open " + device));
  if (ioctl(loop.get(), LOOP_SET_CAPACITY, 0) != 0) {
    return Status::Internal(ErrnoMessage("LOOP_SET_CAPACITY " + device));
  }
  return Status::Ok();
}

StatusOr<int64_t> BlockDeviceSize(const std::string& device) {
  Fd fd(open(device.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return Status::Internal(ErrnoMessage("open " + device));
  uint64_t size = 0;
  if (ioctl(fd.get(), BLKGETSIZE64, &size) != 0) {
    return Status::Internal(ErrnoMessage("BLKGETSIZE64 " + device));
  }
  return static_cast<int64_t>(size);
}

}  // namespace ephemera::csi
