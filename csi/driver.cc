// Driver wiring (see driver.h).
#include "csi/driver.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "common/http_endpoint.h"
#include "common/log.h"
#include "csi/backends/block_device.h"
#include "csi/backends/direct_device_manager.h"
#include "csi/backends/file_device_manager.h"
#include "csi/backends/libndctl_pmem_api.h"
#include "csi/backends/lvm_device_manager.h"
#include "csi/controller_service.h"
#include "csi/csi_probe.h"
#include "csi/exec_command_runner.h"
#include "csi/grpc_status.h"
#include "csi/identity_service.h"
#include "csi/kubelet_registration.h"
#include "csi/logging_interceptor.h"
#include "csi/metrics.h"
#include "csi/node_service.h"
#include "csi/request_validation.h"
#include "csi/state/state_store.h"
#include "csi/volume_manager.h"

namespace ephemera::csi {

namespace {

using namespace ::csi::v1;  // NOLINT(google-build-using-namespace): the generated messages

StatusOr<std::string> ReadFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::InvalidArgument(flag + ": cannot read " + path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// The Controller service of the capacity listener: GetCapacity only.
class CapacityControllerService final : public Controller::Service {
 public:
  explicit CapacityControllerService(ControllerService& controller) : controller_(controller) {}
  grpc::Status GetCapacity(grpc::ServerContext*, const GetCapacityRequest* request,
                           GetCapacityResponse* response) override {
    return Handle([&] { return controller_.DoGetCapacity(*request, response); });
  }

 private:
  ControllerService& controller_;
};

// The Node service of the capacity listener: NodeGetInfo only.
class CapacityNodeService final : public Node::Service {
 public:
  explicit CapacityNodeService(NodeService& node) : node_(node) {}
  grpc::Status NodeGetInfo(grpc::ServerContext*, const NodeGetInfoRequest*,
                           NodeGetInfoResponse* response) override {
    node_.FillNodeInfo(response);
    return grpc::Status::OK;
  }

 private:
  NodeService& node_;
};

// Below the probe's timeoutSeconds in manifests/driver.yaml.
constexpr std::chrono::milliseconds kProbeTimeout{2000};

void LogReport(const VolumeManager::RecoveryReport& report) {
  auto print = [](const char* what, const std::vector<std::string>& ids) {
    for (const std::string& id : ids)
      log::Info("recovery", {{"action", what}, {"volume", id}});
  };
  print("rolled back interrupted create of", report.rolled_back);
  print("finished interrupted delete of", report.finished_delete);
  print("dropped record without device", report.dropped_records);
  print("ORPHANED device without record (use --remove-orphans to delete)", report.orphans);
  print("removed orphaned device", report.removed_orphans);
  print("UNREADABLE record file (left in place)", report.corrupt_records);
  print("rolled back interrupted snapshot", report.rolled_back_snapshots);
  print("finished interrupted delete of snapshot", report.finished_snapshot_deletes);
  print("dropped snapshot record without its copy", report.dropped_snapshots);
  print("ORPHANED snapshot copy without record (use --remove-orphans to delete)",
        report.orphan_snapshots);
  print("could not repair now (left in place)", report.errors);
}

}  // namespace

struct Driver::Impl {
  Config config;
  Metrics metrics;
  ExecCommandRunner runner;
  std::unique_ptr<PmemApi> pmem;  // the direct backend's libndctl context
  std::unique_ptr<DeviceManager> devices;
  std::unique_ptr<StateStore> store;
  std::unique_ptr<StateStore> snapshot_store;  // with a backend that has snapshots
  std::unique_ptr<VolumeManager> volumes;
  std::unique_ptr<IdentityService> identity;
  std::unique_ptr<ControllerService> controller;
  std::unique_ptr<NodeService> node;
  std::unique_ptr<IdentityService> capacity_identity;
  std::unique_ptr<CapacityControllerService> capacity_controller;
  std::unique_ptr<CapacityNodeService> capacity_node;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<grpc::Server> capacity_server;
  std::unique_ptr<HttpEndpoint> http;
  std::unique_ptr<KubeletRegistration>
      registration;  // null when --kubelet-registration-path is off
  std::string socket_path;
  // kStarting while the backend starts and the state is recovered (erases of volumes that were
  // being deleted may take minutes then), kServing from the moment the CSI gRPC server serves,
  // kStopped once Shutdown() begins. Alive while starting, ready only while serving.
  enum Phase { kStarting, kServing, kStopped };
  std::atomic<int> phase{kStarting};
  // Refreshes the capacity gauges, so that /metrics never waits for the backend (whose lock a
  // long create may hold) on the endpoint's only thread, where /healthz would wait too.
  std::thread capacity_refresher;
  std::mutex refresher_mu;
  std::condition_variable refresher_cv;
  bool refresher_stop = false;  // GUARDED_BY(refresher_mu)

  Status Validate() const;
  KubeletRegistration::Options RegistrationOptions() const;
  Status StartCapacityListener();
  Status StartHttpEndpoint();
  Status StartRegistration();
  void StartCapacityRefresher();
  void StopCapacityRefresher();
  Status CsiSocketCheck() const;
};

// How often the capacity gauges are refreshed besides every GetCapacity call.
constexpr std::chrono::seconds kCapacityRefresh{10};

Status Driver::Impl::Validate() const {
  if (config.mode != "node") {
    return Status::InvalidArgument("--mode: only \"node\" is supported, got \"" + config.mode +
                                   "\"");
  }
  if (!config.endpoint.starts_with("unix://") || config.endpoint.size() <= 7) {
    return Status::InvalidArgument("--endpoint: must be unix:///path, got \"" + config.endpoint +
                                   "\"");
  }
  if (config.node_id.empty() || config.node_id.size() > 128) {
    return Status::InvalidArgument("--node-id: required, at most 128 characters");
  }
  if (config.backend != "file" && config.backend != "lvm" && config.backend != "direct") {
    return Status::InvalidArgument("--backend: file, direct or lvm, got \"" + config.backend +
                                   "\"");
  }
  if (config.backend == "file" && config.file_capacity < FileDeviceManager::kAlignment) {
    return Status::InvalidArgument("--file-capacity: required, at least 4Mi");
  }
  if (config.default_volume_size <= 0) {
    return Status::InvalidArgument("--default-volume-size: must be positive");
  }
  bool any_tls = !config.tls_ca.empty() || !config.tls_cert.empty() || !config.tls_key.empty();
  if (!config.capacity_listen.empty() &&
      (config.tls_ca.empty() || config.tls_cert.empty() || config.tls_key.empty())) {
    return Status::InvalidArgument("--capacity-listen needs --tls-ca, --tls-cert and --tls-key");
  }
  if (config.capacity_listen.empty() && any_tls) {
    return Status::InvalidArgument("--tls-* given without --capacity-listen");
  }
  if (!config.kubelet_registration_path.empty()) {
    EPHEMERA_RETURN_IF_ERROR(KubeletRegistration::Validate(RegistrationOptions()));
  }
  if (!config.http_endpoint.empty()) {
    std::string host;
    int port = 0;
    EPHEMERA_RETURN_IF_ERROR(
        ParseHostPort(config.http_endpoint, &host, &port).WithContext("--http-endpoint"));
  }
  return Status::Ok();
}

Status Driver::Impl::StartCapacityListener() {
  StatusOr<std::string> ca = ReadFile("--tls-ca", config.tls_ca);
  if (!ca.ok()) return ca.status();
  StatusOr<std::string> cert = ReadFile("--tls-cert", config.tls_cert);
  if (!cert.ok()) return cert.status();
  StatusOr<std::string> key = ReadFile("--tls-key", config.tls_key);
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = *ca;
  options.pem_key_cert_pairs.push_back({*key, *cert});
  capacity_identity = std::make_unique<IdentityService>(devices->SupportsExpansion());
  capacity_controller = std::make_unique<CapacityControllerService>(*controller);
  capacity_node = std::make_unique<CapacityNodeService>(*node);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.capacity_listen, grpc::SslServerCredentials(options));
  builder.RegisterService(capacity_identity.get());
  builder.RegisterService(capacity_controller.get());
  builder.RegisterService(capacity_node.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<LoggingInterceptorFactory>(&metrics));
  builder.experimental().SetInterceptorCreators(std::move(factories));
  capacity_server = builder.BuildAndStart();
  if (!capacity_server) {
    return Status::Internal("cannot listen on --capacity-listen=" + config.capacity_listen);
  }
  log::Info("capacity listener (mTLS)", {{"address", config.capacity_listen}});
  return Status::Ok();
}

KubeletRegistration::Options Driver::Impl::RegistrationOptions() const {
  KubeletRegistration::Options options;
  options.socket_dir = config.plugin_registration_path;
  options.driver_name = std::string(kDriverName);
  options.kubelet_endpoint = config.kubelet_registration_path;
  return options;
}

// After the CSI server serves: the kubelet calls NodeGetInfo on the CSI socket while it
// registers the driver.
Status Driver::Impl::StartRegistration() {
  // The kubelet's path and ours name the same file through different mounts; different file
  // names are a likely mistake in the manifest, but not certainly one.
  const std::string ours = socket_path.substr(socket_path.rfind('/') + 1);
  const std::string kubelets =
      config.kubelet_registration_path.substr(config.kubelet_registration_path.rfind('/') + 1);
  if (ours != kubelets) {
    log::Warning("--kubelet-registration-path and --endpoint name different files",
                 {{"kubelet-registration-path", config.kubelet_registration_path},
                  {"endpoint", config.endpoint}});
  }
  registration = std::make_unique<KubeletRegistration>(RegistrationOptions(), &metrics);
  EPHEMERA_RETURN_IF_ERROR(registration->Start().WithContext("kubelet registration"));
  if (http) {
    http->AddReadinessCheck("kubelet-registration",
                            [this] { return registration->ReadinessCheck(); });
  }
  return Status::Ok();
}

void Driver::Impl::StartCapacityRefresher() {
  capacity_refresher = std::thread([this] {
    std::unique_lock<std::mutex> lock(refresher_mu);
    while (!refresher_cv.wait_for(lock, kCapacityRefresh, [this] { return refresher_stop; })) {
      lock.unlock();
      StatusOr<Capacity> now = volumes->GetCapacity();
      if (now.ok()) {
        metrics.SetCapacity(now->total, now->available, now->max_volume_size);
      } else {
        log::Warning("refreshing the capacity metrics", {{"error", now.status().ToString()}});
      }
      lock.lock();
    }
  });
}

void Driver::Impl::StopCapacityRefresher() {
  {
    std::lock_guard<std::mutex> lock(refresher_mu);
    refresher_stop = true;
  }
  refresher_cv.notify_all();
  if (capacity_refresher.joinable()) capacity_refresher.join();
}

// Ready while the CSI server serves and its socket is in place: kubelet and the sidecars reach
// the driver through that file only.
Status Driver::Impl::CsiSocketCheck() const {
  if (phase == kStarting) {
    return Status::Unavailable("starting: recovering the volumes' state, not serving yet");
  }
  if (phase != kServing) return Status::Unavailable("the CSI server is not serving");
  struct stat st {};
  if (stat(socket_path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) {
    return Status::Unavailable("the CSI socket " + socket_path + " is missing");
  }
  return Status::Ok();
}

// Started first, before the backend and the recovery of the state, so that a long recovery (the
// erase of a big volume that was being deleted) is not taken for a dead driver. /metrics renders
// the gauges as they are (the capacity refresher and every GetCapacity keep them current);
// /healthz is 200 while the driver starts, then while Identity.Probe answers through the CSI
// socket file (check csi-probe, what the livenessprobe sidecar would check); /readyz adds
// CsiSocketCheck() (not while starting) and, with registration on, that the kubelet registered
// the driver.
Status Driver::Impl::StartHttpEndpoint() {
  http = std::make_unique<HttpEndpoint>([this] { return metrics.Render(); });
  http->AddLivenessCheck("csi-probe", [this] {
    // Starting is progress: every command the backend runs has a time limit.
    if (phase == kStarting) return Status::Ok();
    if (phase != kServing) return Status::Unavailable("the CSI server is not serving");
    return ProbeCsiSocket(socket_path, kProbeTimeout);
  });
  http->AddReadinessCheck("csi-socket", [this] { return CsiSocketCheck(); });
  EPHEMERA_RETURN_IF_ERROR(http->Start(config.http_endpoint).WithContext("--http-endpoint"));
  log::Info("metrics and health",
            {{"address", config.http_endpoint}, {"port", std::to_string(http->port())}});
  return Status::Ok();
}

Driver::Driver(Config config) : impl_(std::make_unique<Impl>()) {
  impl_->config = std::move(config);
  ExecCommandRunner::Options runner_options;
  runner_options.timeout_override = impl_->config.command_timeout;
  impl_->runner = ExecCommandRunner(runner_options);
}

Driver::~Driver() {
  Shutdown();
}

Status Driver::Start() {
  Impl& d = *impl_;
  EPHEMERA_RETURN_IF_ERROR(d.Validate());
  d.socket_path = d.config.endpoint.substr(7);
  if (!d.config.http_endpoint.empty()) EPHEMERA_RETURN_IF_ERROR(d.StartHttpEndpoint());
  if (d.config.backend == "lvm") {
    auto lvm =
        std::make_unique<LvmDeviceManager>(d.runner, d.config.pmem_percentage, ZeroBlockDevice);
    EPHEMERA_RETURN_IF_ERROR(lvm->Init().WithContext("lvm backend"));
    d.devices = std::move(lvm);
  } else if (d.config.backend == "direct") {
    StatusOr<std::unique_ptr<LibndctlPmemApi>> api = LibndctlPmemApi::Open();
    if (!api.ok()) return api.status().WithContext("direct backend");
    d.pmem = std::move(*api);
    auto direct = std::make_unique<DirectDeviceManager>(*d.pmem, ZeroBlockDevice);
    EPHEMERA_RETURN_IF_ERROR(direct->Init().WithContext("direct backend"));
    d.devices = std::move(direct);
  } else {
    auto file =
        std::make_unique<FileDeviceManager>(d.config.file_dir, d.config.file_capacity, EraseFile);
    EPHEMERA_RETURN_IF_ERROR(file->Init());
    d.devices = std::move(file);
  }
  d.store = std::make_unique<StateStore>(d.config.state_dir);
  EPHEMERA_RETURN_IF_ERROR(d.store->Init());
  VolumeManager::Options options;
  options.default_size = d.config.default_volume_size;
  options.remove_orphans = d.config.remove_orphans;
  if (d.devices->SupportsSnapshots()) {
    d.snapshot_store = std::make_unique<StateStore>(d.config.state_dir + "/snapshots");
    EPHEMERA_RETURN_IF_ERROR(d.snapshot_store->Init());
  }
  d.volumes =
      std::make_unique<VolumeManager>(*d.devices, *d.store, options, d.snapshot_store.get());
  StatusOr<VolumeManager::RecoveryReport> report = d.volumes->Recover();
  if (!report.ok()) return report.status().WithContext("recovering state");
  LogReport(*report);
  d.metrics.SetOrphans(static_cast<int64_t>(
      report->orphans.size() + report->orphan_snapshots.size() - report->removed_orphans.size()));
  StatusOr<Capacity> capacity = d.volumes->GetCapacity();
  if (!capacity.ok()) return capacity.status();
  d.metrics.SetCapacity(capacity->total, capacity->available, capacity->max_volume_size);

  d.identity = std::make_unique<IdentityService>(d.devices->SupportsExpansion());
  d.controller = std::make_unique<ControllerService>(*d.volumes, d.config.node_id, &d.metrics);
  d.node = std::make_unique<NodeService>(*d.volumes, d.runner, d.config.node_id);

  unlink(d.socket_path.c_str());  // a socket left by a previous run
  grpc::ServerBuilder builder;
  builder.AddListeningPort(d.config.endpoint, grpc::InsecureServerCredentials());
  builder.RegisterService(d.identity.get());
  builder.RegisterService(d.controller.get());
  builder.RegisterService(d.node.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<LoggingInterceptorFactory>(&d.metrics));
  builder.experimental().SetInterceptorCreators(std::move(factories));
  d.server = builder.BuildAndStart();
  if (!d.server) return Status::Internal("cannot listen on " + d.config.endpoint);
  d.phase = Impl::kServing;
  log::Info("serving", {{"version", std::string(EPHEMERA_VERSION)},
                        {"driver", std::string(kDriverName)},
                        {"endpoint", d.config.endpoint},
                        {"node", d.config.node_id},
                        {"backend", d.devices->Name()}});

  if (!d.config.kubelet_registration_path.empty()) EPHEMERA_RETURN_IF_ERROR(d.StartRegistration());
  if (!d.config.capacity_listen.empty()) EPHEMERA_RETURN_IF_ERROR(d.StartCapacityListener());
  if (d.http) d.StartCapacityRefresher();
  return Status::Ok();
}

void Driver::Wait() {
  if (impl_->server) impl_->server->Wait();
}

void Driver::Shutdown() {
  Impl& d = *impl_;
  d.phase = Impl::kStopped;
  d.StopCapacityRefresher();
  // First the registration socket: the kubelet unregisters the driver before its socket goes.
  if (d.registration) d.registration->Stop();
  if (d.http) d.http->Stop();
  if (d.capacity_server) d.capacity_server->Shutdown();
  if (d.server) {
    d.server->Shutdown();
    unlink(d.socket_path.c_str());
  }
}

}  // namespace ephemera::csi
