// The health of a published volume, as NodeGetVolumeStats reports it in `volume_condition`: what
// the kernel says about the device and the filesystem behind a volume path. Each check returns a
// sentence for the condition's message, or "" when it found nothing wrong.
//
// Thread safety: pure functions over sysfs and the file system.
#pragma once

#include <string>

#include "csi/mount_util.h"

namespace ephemera::csi {

// A loop device ("7:3") whose backing file was deleted: the device still holds the file, whose
// data goes with the last close. "" for a healthy loop device and for other devices.
std::string LoopBackingProblem(const std::string& major_minor);

// The filesystem mounted at `volume_path` (its mount table entry `mount`, device `major_minor`):
// I/O errors when it is opened (a filesystem shut down after an error: xfs, ext4), a superblock
// made read-only (by the kernel after an error, errors=remount-ro, or by a remount) under a mount
// that is meant to be read-write, and errors that ext4 has recorded (/sys/fs/ext4/<dev>/
// errors_count). Several problems are joined with "; ".
std::string FilesystemProblem(const std::string& volume_path, const MountEntry& mount,
                              const std::string& major_minor);

}  // namespace ephemera::csi
