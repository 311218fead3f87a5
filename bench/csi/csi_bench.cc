// csi_bench: times the driver's provisioning path against a running ephemera-pmem-csi:
//   up   = CreateVolume + NodeStageVolume (mkfs ext4, mount) + NodePublishVolume (bind)
//   down = NodeUnpublishVolume + NodeUnstageVolume + DeleteVolume
// Usage: csi_bench ENDPOINT WORKDIR ITERATIONS SIZE_BYTES ERASEAFTER(true|false) [CALLERS [PHASES]]
// PHASES "controller" times CreateVolume (up) and DeleteVolume (down) alone; the default, "node",
// the whole paths above.
// Prints one line per phase: name, iterations, median, p99 and mean in milliseconds.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "csi/proto/csi.grpc.pb.h"

namespace {

using namespace ::csi::v1;  // NOLINT(google-build-using-namespace)
using Clock = std::chrono::steady_clock;

bool Check(const grpc::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %d %s\n", what, status.error_code(), status.error_message().c_str());
  }
  return status.ok();
}

void Report(const char* name, std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  double mean = std::accumulate(ms.begin(), ms.end(), 0.0) / static_cast<double>(ms.size());
  const double p99 = ms[std::min(ms.size() - 1, (ms.size() * 99) / 100)];
  std::printf("%-28s n=%zu median=%.1f ms p99=%.1f ms mean=%.1f ms\n", name, ms.size(),
              ms[ms.size() / 2], p99, mean);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 6 || argc > 8) {
    std::fprintf(stderr,
                 "usage: csi_bench ENDPOINT WORKDIR ITERATIONS SIZE_BYTES ERASEAFTER [CALLERS "
                 "[node|controller]]\n");
    return 2;
  }
  auto channel = grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials());
  auto controller = Controller::NewStub(channel);
  auto node = Node::NewStub(channel);
  std::string work = argv[2];
  int iterations = std::stoi(argv[3]);
  int64_t size = std::stoll(argv[4]);
  std::string erase = argv[5];
  const int callers = argc >= 7 ? std::max(1, std::stoi(argv[6])) : 1;
  const bool node_phases = argc < 8 || std::string(argv[7]) != "controller";

  VolumeCapability capability;
  capability.mutable_mount()->set_fs_type("ext4");
  capability.mutable_access_mode()->set_mode(VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  std::vector<double> up, down;
  std::mutex mu;
  std::atomic<bool> failed{false};
  // Each caller does its share of the iterations, one after another, with names of its own.
  auto caller = [&](int c) -> int {
    for (int i = c; i < iterations; i += callers) {
      std::string staging = work + "/staging-" + std::to_string(i);
      std::string target = work + "/target-" + std::to_string(i);
      auto t0 = Clock::now();
      CreateVolumeRequest create;
      create.set_name("bench-" + std::to_string(i));
      create.mutable_capacity_range()->set_required_bytes(size);
      *create.add_volume_capabilities() = capability;
      (*create.mutable_parameters())["eraseafter"] = erase;
      CreateVolumeResponse created;
      grpc::ClientContext c1;
      if (!Check(controller->CreateVolume(&c1, create, &created), "CreateVolume")) return 1;
      const std::string& id = created.volume().volume_id();
      if (!node_phases) {
        auto t1 = Clock::now();
        DeleteVolumeRequest del;
        del.set_volume_id(id);
        DeleteVolumeResponse deleted;
        grpc::ClientContext c6;
        if (!Check(controller->DeleteVolume(&c6, del, &deleted), "DeleteVolume")) return 1;
        auto t2 = Clock::now();
        std::lock_guard<std::mutex> lock(mu);
        up.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        down.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
        continue;
      }
      NodeStageVolumeRequest stage;
      stage.set_volume_id(id);
      stage.set_staging_target_path(staging);
      *stage.mutable_volume_capability() = capability;
      NodeStageVolumeResponse staged;
      grpc::ClientContext c2;
      if (!Check(node->NodeStageVolume(&c2, stage, &staged), "NodeStageVolume")) return 1;
      NodePublishVolumeRequest publish;
      publish.set_volume_id(id);
      publish.set_staging_target_path(staging);
      publish.set_target_path(target);
      *publish.mutable_volume_capability() = capability;
      NodePublishVolumeResponse published;
      grpc::ClientContext c3;
      if (!Check(node->NodePublishVolume(&c3, publish, &published), "NodePublishVolume")) return 1;
      auto t1 = Clock::now();
      NodeUnpublishVolumeRequest unpublish;
      unpublish.set_volume_id(id);
      unpublish.set_target_path(target);
      NodeUnpublishVolumeResponse unpublished;
      grpc::ClientContext c4;
      if (!Check(node->NodeUnpublishVolume(&c4, unpublish, &unpublished), "NodeUnpublish"))
        return 1;
      NodeUnstageVolumeRequest unstage;
      unstage.set_volume_id(id);
      unstage.set_staging_target_path(staging);
      NodeUnstageVolumeResponse unstaged;
      grpc::ClientContext c5;
      if (!Check(node->NodeUnstageVolume(&c5, unstage, &unstaged), "NodeUnstage")) return 1;
      DeleteVolumeRequest del;
      del.set_volume_id(id);
      DeleteVolumeResponse deleted;
      grpc::ClientContext c6;
      if (!Check(controller->DeleteVolume(&c6, del, &deleted), "DeleteVolume")) return 1;
      auto t2 = Clock::now();
      std::lock_guard<std::mutex> lock(mu);
      up.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      down.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
    }
    return 0;
  };
  std::vector<std::thread> threads;
  threads.reserve(callers);
  for (int c = 0; c < callers; ++c) {
    threads.emplace_back([&, c] {
      if (caller(c) != 0) failed = true;
    });
  }
  for (auto& t : threads)
    t.join();
  if (failed) return 1;
  std::string suffix = " (eraseafter=" + erase + ", " + std::to_string(callers) + " callers)";
  Report(((node_phases ? "driver up" : "driver CreateVolume") + suffix).c_str(), up);
  Report(((node_phases ? "driver down" : "driver DeleteVolume") + suffix).c_str(), down);
  return 0;
}
