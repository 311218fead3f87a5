// Registration with the kubelet (see kubelet_registration.h).
#include "csi/kubelet_registration.h"

#include <grpcpp/grpcpp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>

#include "common/log.h"
#include "csi/proto/pluginregistration.grpc.pb.h"
#include "csi/system_error.h"

namespace ephemera::csi {

namespace {

// Larger than any PluginInfo or RegistrationStatus the kubelet sends or needs.
constexpr int kMaxMessageBytes = 64 * 1024;
// The temporary name Listen() binds is the socket's with "." before and ".N" (N < 10^6) after.
constexpr size_t kTempExtra = 8;

}  // namespace

std::string CleanPeerText(const std::string& text, size_t max) {
  std::string out;
  const size_t n = std::min(text.size(), max);
  out.reserve(n + 3);
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
  }
  if (text.size() > max) out += "...";
  return out;
}

// The gRPC service of one server instance (a new one whenever the socket is re-created).
class KubeletRegistration::Service final : public ::pluginregistration::Registration::Service {
 public:
  explicit Service(KubeletRegistration& owner) : owner_(owner) {}

  grpc::Status GetInfo(grpc::ServerContext*, const ::pluginregistration::InfoRequest*,
                       ::pluginregistration::PluginInfo* info) override {
    info->set_type("CSIPlugin");
    info->set_name(owner_.options_.driver_name);
    info->set_endpoint(owner_.options_.kubelet_endpoint);
    for (const std::string& version : owner_.options_.supported_versions)
      info->add_supported_versions(version);
    log::Info(
        "kubelet asked for the plugin info",
        {{"name", owner_.options_.driver_name}, {"endpoint", owner_.options_.kubelet_endpoint}});
    return grpc::Status::OK;
  }

  grpc::Status NotifyRegistrationStatus(
      grpc::ServerContext*, const ::pluginregistration::RegistrationStatus* status,
      ::pluginregistration::RegistrationStatusResponse*) override {
    owner_.OnStatus(status->plugin_registered(), status->error());
    return grpc::Status::OK;
  }

 private:
  KubeletRegistration& owner_;
};

KubeletRegistration::KubeletRegistration(Options options, Metrics* metrics)
    : options_(std::move(options)),
      metrics_(metrics),
      socket_path_(options_.socket_dir + "/" + options_.driver_name + "-reg.sock") {}

KubeletRegistration::~KubeletRegistration() {
  Stop();
}

Status KubeletRegistration::Validate(const Options& options) {
  if (options.kubelet_endpoint.empty() || options.kubelet_endpoint.front() != '/') {
    return Status::InvalidArgument("--kubelet-registration-path: must be an absolute path, got \"" +
                                   CleanPeerText(options.kubelet_endpoint, 200) + "\"");
  }
  if (options.socket_dir.empty() || options.socket_dir.front() != '/') {
    return Status::InvalidArgument("--plugin-registration-path: must be an absolute path, got \"" +
                                   CleanPeerText(options.socket_dir, 200) + "\"");
  }
  constexpr size_t kMaxSocketPath = sizeof(sockaddr_un::sun_path) - 1;
  if (options.kubelet_endpoint.size() > kMaxSocketPath) {
    return Status::InvalidArgument("--kubelet-registration-path: longer than " +
                                   std::to_string(kMaxSocketPath) +
                                   " bytes, the limit of a Unix socket path");
  }
  // Listen() first binds DIR/.NAME-reg.sock.N (N < 10^6): kTempExtra bytes more than the socket.
  const size_t socket_length =
      options.socket_dir.size() + 1 + options.driver_name.size() + std::string("-reg.sock").size();
  if (socket_length + kTempExtra > kMaxSocketPath) {
    return Status::InvalidArgument(
        "--plugin-registration-path: the registration socket's path would be " +
        std::to_string(socket_length) + " bytes; at most " +
        std::to_string(kMaxSocketPath - kTempExtra) + " work (a Unix socket path has at most " +
        std::to_string(kMaxSocketPath) + " bytes, and a temporary name " +
        std::to_string(kTempExtra) + " bytes longer is bound first)");
  }
  if (options.driver_name.empty() || options.supported_versions.empty()) {
    return Status::InvalidArgument("kubelet registration: driver name and versions are required");
  }
  return Status::Ok();
}

std::string KubeletRegistration::socket_path() const {
  return socket_path_;
}

KubeletRegistration::State KubeletRegistration::state() const {
  std::lock_guard<std::mutex> lock(state_mu_);
  return state_;
}

Status KubeletRegistration::ReadinessCheck() const {
  const State now = state();
  switch (now.phase) {
    case Phase::kRegistered:
      return Status::Ok();
    case Phase::kWaiting:
      return Status::Unavailable("the kubelet has not registered the driver yet (socket " +
                                 socket_path_ + ")");
    case Phase::kRefused:
      break;
  }
  return Status::Unavailable("the kubelet refused the registration: " + now.error);
}

void KubeletRegistration::OnStatus(bool registered, const std::string& error) {
  const std::string reason = CleanPeerText(error, kMaxErrorLength);
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    state_.phase = registered ? Phase::kRegistered : Phase::kRefused;
    state_.error = registered ? "" : reason;
    if (!registered) ++state_.refusals;
  }
  if (metrics_ != nullptr) {
    metrics_->SetKubeletRegistered(registered);
    if (!registered) metrics_->CountKubeletRefusal();
  }
  if (registered) {
    log::Info("the kubelet registered the driver", {{"socket", socket_path_}});
  } else {
    // The kubelet retries this socket with backoff; we keep serving (see the header).
    log::Error("the kubelet refused the registration; still serving for its retries",
               Status::FailedPrecondition(reason), {{"socket", socket_path_}});
  }
}

// Serves on socket_path_ with a new server. The server binds a hidden name first (the kubelet
// ignores names starting with '.') that is then renamed to socket_path_: gRPC removes the path it
// bound when the server shuts down, and that must never be socket_path_, which by then may be a
// newer socket of ours or a successor's.
Status KubeletRegistration::Listen() {
  listen_count_ = (listen_count_ + 1) % 1000000;
  const std::string bound = options_.socket_dir + "/." + options_.driver_name + "-reg.sock." +
                            std::to_string(listen_count_);
  auto service = std::make_unique<Service>(*this);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + bound, grpc::InsecureServerCredentials());
  builder.RegisterService(service.get());
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    return Status::Internal("cannot create the registration socket " + socket_path_ +
                            ": cannot listen on " + bound + " (does the directory exist?)");
  }
  auto fail = [&](const std::string& what) {
    const int err = errno;
    server->Shutdown();
    unlink(bound.c_str());
    return Status::Internal(what + ": " + ErrnoText(err));
  };
  // Only root (the kubelet) may connect: anyone else could tell us we were refused.
  if (chmod(bound.c_str(), 0600) != 0) return fail("chmod 0600 " + bound);
  struct stat st {};
  if (stat(bound.c_str(), &st) != 0) return fail("stat " + bound);
  if (rename(bound.c_str(), socket_path_.c_str()) != 0) {
    return fail("rename " + bound + " to " + socket_path_);
  }
  socket_dev_ = st.st_dev;
  socket_ino_ = st.st_ino;
  service_ = std::move(service);
  server_ = std::move(server);
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    // A new socket is a new plugin to the kubelet: what it said about the old one is void.
    state_.phase = Phase::kWaiting;
    state_.error.clear();
  }
  if (metrics_ != nullptr) metrics_->SetKubeletRegistered(false);
  log::Info("registration socket for the kubelet", {{"socket", socket_path_},
                                                    {"name", options_.driver_name},
                                                    {"endpoint", options_.kubelet_endpoint}});
  return Status::Ok();
}

Status KubeletRegistration::Start() {
  EPHEMERA_RETURN_IF_ERROR(Validate(options_));
  {
    std::lock_guard<std::mutex> lock(server_mu_);
    if (started_) return Status::FailedPrecondition("kubelet registration: already started");
    // A socket (or anything else but a directory) left by a previous run.
    if (unlink(socket_path_.c_str()) != 0 && errno != ENOENT) {
      const int err = errno;
      return Status::Internal("cannot remove the stale " + socket_path_ + ": " + ErrnoText(err));
    }
    EPHEMERA_RETURN_IF_ERROR(Listen());
    started_ = true;
  }
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stopping_ = false;
  }
  checker_ = std::thread([this] { CheckLoop(); });
  return Status::Ok();
}

Status KubeletRegistration::EnsureSocket() {
  std::lock_guard<std::mutex> lock(server_mu_);
  if (!started_) return Status::Ok();
  struct stat st {};
  if (lstat(socket_path_.c_str(), &st) == 0) return Status::Ok();
  if (errno != ENOENT) {
    const int err = errno;
    return Status::Internal("stat " + socket_path_ + ": " + ErrnoText(err));
  }
  log::Warning("the registration socket is gone; re-creating it", {{"socket", socket_path_}});
  // The old listener is bound to the removed file: stop it before a new one binds the path, so
  // that its shutdown cannot remove the new file.
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_.reset();
  }
  {
    std::lock_guard<std::mutex> state_lock(state_mu_);
    ++state_.recreated;
  }
  return Listen();
}

void KubeletRegistration::CheckLoop() {
  std::unique_lock<std::mutex> lock(stop_mu_);
  while (!stop_cv_.wait_for(lock, options_.check_interval, [this] { return stopping_; })) {
    lock.unlock();
    if (Status s = EnsureSocket(); !s.ok()) {
      log::Error("cannot re-create the registration socket; retrying", s,
                 {{"socket", socket_path_}});
    }
    lock.lock();
  }
}

void KubeletRegistration::Stop() {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (checker_.joinable()) checker_.join();
  std::lock_guard<std::mutex> lock(server_mu_);
  if (!started_) return;
  started_ = false;
  if (!server_) return;  // the last re-creation failed
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_.reset();
  service_.reset();
  // Remove the file only if it is still the one we made (not a successor's socket).
  struct stat st {};
  if (lstat(socket_path_.c_str(), &st) == 0 && st.st_dev == socket_dev_ &&
      st.st_ino == socket_ino_) {
    unlink(socket_path_.c_str());
  }
  log::Info("registration socket closed", {{"socket", socket_path_}});
}

}  // namespace ephemera::csi
