// csi_snapshot_bench: times the file backend's snapshot and restore against the raw commands, on
// a running ephemera-pmem-csi whose pool directory is FILE_DIR:
//   driver snapshot = CreateSnapshot of a volume with data (sparse copy, fsync, two records)
//   driver restore  = CreateVolume from that snapshot (sparse copy, fsync, loop device, records)
//   cp snapshot     = cp --sparse=always VOLUME COPY && sync COPY
//   cp restore      = cp --sparse=always COPY NEW && sync NEW && losetup --find --show NEW
// The volume (SIZE_BYTES) gets DATA_BYTES of random data first, written straight into its file in
// 4 MiB pieces with 4 MiB holes between them (one hole at the end if DATA_BYTES is half the size),
// then fsynced. Each iteration runs the four operations one after the other (driver, then raw;
// the next iteration starts with raw), so that a drift of the shared machine hits both sides, and
// removes what they made before the next one. Prints one line per operation: name, iterations,
// median, p99 and mean in milliseconds, and the ratio of the medians.
// Usage: csi_snapshot_bench ENDPOINT FILE_DIR ITERATIONS SIZE_BYTES DATA_BYTES
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <numeric>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "csi/proto/csi.grpc.pb.h"

namespace {

using namespace ::csi::v1;  // NOLINT(google-build-using-namespace)
using Clock = std::chrono::steady_clock;

void Check(const grpc::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %d %s\n", what, status.error_code(), status.error_message().c_str());
    std::exit(1);  // NOLINT(concurrency-mt-unsafe): one thread
  }
}

// Runs a shell command of this benchmark's own (fixed paths, no outside input), made of `parts`
// joined; exits on failure. The benchmark has one thread.
void Shell(std::initializer_list<std::string_view> parts) {
  std::string command;
  for (std::string_view part : parts)
    command.append(part);
  if (std::system(command.c_str()) != 0) {  // NOLINT(concurrency-mt-unsafe): one thread
    std::fprintf(stderr, "failed: %s\n", command.c_str());
    std::exit(1);  // NOLINT(concurrency-mt-unsafe): one thread
  }
}

double TimeMs(const std::function<void()>& work) {
  auto start = Clock::now();
  work();
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double Median(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void Report(const char* name, std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  double mean = std::accumulate(ms.begin(), ms.end(), 0.0) / static_cast<double>(ms.size());
  const double p99 = ms[std::min(ms.size() - 1, (ms.size() * 99) / 100)];
  std::printf("%-18s n=%zu median=%.1f ms p99=%.1f ms mean=%.1f ms\n", name, ms.size(),
              ms[ms.size() / 2], p99, mean);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr,
                 "usage: csi_snapshot_bench ENDPOINT FILE_DIR ITERATIONS SIZE_BYTES DATA_BYTES\n");
    return 2;
  }
  auto channel = grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials());
  auto controller = Controller::NewStub(channel);
  const std::string dir = argv[2];
  const int iterations = std::stoi(argv[3]);
  const int64_t size = std::stoll(argv[4]);
  const int64_t data = std::stoll(argv[5]);
  constexpr int64_t kPiece = int64_t{4} << 20;

  VolumeCapability capability;
  capability.mutable_block();
  capability.mutable_access_mode()->set_mode(VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  auto create = [&](const std::string& name, const VolumeContentSource* source) {
    CreateVolumeRequest request;
    request.set_name(name);
    request.mutable_capacity_range()->set_required_bytes(size);
    (*request.mutable_parameters())["eraseafter"] = "false";
    *request.add_volume_capabilities() = capability;
    if (source != nullptr) *request.mutable_volume_content_source() = *source;
    CreateVolumeResponse response;
    grpc::ClientContext context;
    Check(controller->CreateVolume(&context, request, &response), "CreateVolume");
    return response.volume().volume_id();
  };
  auto remove_volume = [&](const std::string& id) {
    DeleteVolumeRequest request;
    request.set_volume_id(id);
    DeleteVolumeResponse response;
    grpc::ClientContext context;
    Check(controller->DeleteVolume(&context, request, &response), "DeleteVolume");
  };

  const std::string volume = create("bench-source", nullptr);
  const std::string volume_file = dir + "/" + volume + ".img";
  {
    int fd = open(volume_file.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
      std::perror(volume_file.c_str());
      return 1;
    }
    std::mt19937_64 random(42);
    std::vector<char> piece(kPiece);
    for (int64_t written = 0, offset = 0; written < data && offset < size; offset += 2 * kPiece) {
      for (size_t i = 0; i + 8 <= piece.size(); i += 8) {
        uint64_t value = random();
        std::memcpy(piece.data() + i, &value, 8);
      }
      if (pwrite(fd, piece.data(), piece.size(), offset) != static_cast<ssize_t>(piece.size())) {
        std::perror("pwrite");
        return 1;
      }
      written += kPiece;
    }
    fsync(fd);
    close(fd);
  }

  std::vector<double> driver_snapshot, driver_restore, cp_snapshot, cp_restore;
  // In the pool directory (the same filesystem), under names the driver does not count or list.
  const std::string raw_copy = dir + "/bench-raw-snapshot.raw";
  const std::string raw_new = dir + "/bench-raw-restored.raw";
  for (int i = 0; i < iterations; ++i) {
    auto driver_side = [&] {
      std::string snapshot_id;
      driver_snapshot.push_back(TimeMs([&] {
        CreateSnapshotRequest request;
        request.set_name("bench-snapshot-" + std::to_string(i));
        request.set_source_volume_id(volume);
        CreateSnapshotResponse response;
        grpc::ClientContext context;
        Check(controller->CreateSnapshot(&context, request, &response), "CreateSnapshot");
        snapshot_id = response.snapshot().snapshot_id();
      }));
      VolumeContentSource source;
      source.mutable_snapshot()->set_snapshot_id(snapshot_id);
      std::string restored;
      driver_restore.push_back(
          TimeMs([&] { restored = create("bench-restored-" + std::to_string(i), &source); }));
      remove_volume(restored);
      DeleteSnapshotRequest request;
      request.set_snapshot_id(snapshot_id);
      DeleteSnapshotResponse response;
      grpc::ClientContext context;
      Check(controller->DeleteSnapshot(&context, request, &response), "DeleteSnapshot");
    };
    auto raw_side = [&] {
      cp_snapshot.push_back(TimeMs([&] {
        Shell({"cp --sparse=always '", volume_file, "' '", raw_copy, "' && sync '", raw_copy, "'"});
      }));
      cp_restore.push_back(TimeMs([&] {
        Shell({"cp --sparse=always '", raw_copy, "' '", raw_new, "' && sync '", raw_new,
               "' && losetup --find --show '", raw_new, "' > '", raw_new, ".loop'"});
      }));
      Shell({"losetup -d \"$(cat '", raw_new, ".loop')\" && rm -f '", raw_new, "' '", raw_new,
             ".loop' '", raw_copy, "'"});
    };
    if (i % 2 == 0) {
      driver_side();
      raw_side();
    } else {
      raw_side();
      driver_side();
    }
  }
  remove_volume(volume);
  Report("driver snapshot", driver_snapshot);
  Report("cp snapshot", cp_snapshot);
  Report("driver restore", driver_restore);
  Report("cp restore", cp_restore);
  std::printf("ratio of medians: snapshot %.2f, restore %.2f\n",
              Median(driver_snapshot) / Median(cp_snapshot),
              Median(driver_restore) / Median(cp_restore));
  return 0;
}
