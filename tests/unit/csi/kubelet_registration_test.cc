// Registration with the kubelet: a gRPC client plays the kubelet on the registration socket
// (GetInfo, NotifyRegistrationStatus), the socket is removed and comes back; and the liveness
// probe through a CSI socket.
#include "csi/kubelet_registration.h"

#include <grpcpp/grpcpp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "csi/csi_probe.h"
#include "csi/identity_service.h"
#include "csi/proto/pluginregistration.grpc.pb.h"
#include "temp_dir.h"

namespace ephemera::csi {
namespace {

using testing::TempDir;
using Phase = KubeletRegistration::Phase;

constexpr const char* kKubeletEndpoint = "/var/lib/kubelet/plugins/pmem-csi.ephemera.io/csi.sock";

KubeletRegistration::Options TestOptions(const std::string& dir) {
  KubeletRegistration::Options options;
  options.socket_dir = dir;
  options.driver_name = "pmem-csi.ephemera.io";
  options.kubelet_endpoint = kKubeletEndpoint;
  return options;
}

// What the kubelet does on the registration socket: a new connection per call.
class FakeKubeletClient {
 public:
  explicit FakeKubeletClient(const std::string& socket) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    stub_ = ::pluginregistration::Registration::NewStub(
        grpc::CreateCustomChannel("unix:" + socket, grpc::InsecureChannelCredentials(), args));
  }
  grpc::Status GetInfo(::pluginregistration::PluginInfo* info) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub_->GetInfo(&context, {}, info);
  }
  grpc::Status Notify(bool registered, const std::string& error) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    ::pluginregistration::RegistrationStatus status;
    status.set_plugin_registered(registered);
    status.set_error(error);
    ::pluginregistration::RegistrationStatusResponse response;
    return stub_->NotifyRegistrationStatus(&context, status, &response);
  }

 private:
  std::unique_ptr<::pluginregistration::Registration::Stub> stub_;
};

bool IsSocket(const std::string& path, struct stat* out = nullptr) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return false;
  if (out != nullptr) *out = st;
  return S_ISSOCK(st.st_mode);
}

// A line of the Prometheus text that starts with `prefix`, or "" when none does.
std::string MetricLine(const Metrics& metrics, const std::string& prefix) {
  const std::string text = metrics.Render();
  size_t at = 0;
  while (at < text.size()) {
    const size_t end = text.find('\n', at);
    std::string line = text.substr(at, end - at);
    if (line.rfind(prefix, 0) == 0) return line;
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return "";
}

TEST_CASE("kubelet registration: GetInfo names the driver, its CSI socket and CSI 1.0.0",
          "[csi][registration]") {
  TempDir dir;
  // A file left by an earlier run is replaced.
  const std::string socket = dir.path() + "/pmem-csi.ephemera.io-reg.sock";
  std::ofstream(socket) << "stale";
  Metrics metrics;
  KubeletRegistration registration(TestOptions(dir.path()), &metrics);
  REQUIRE(registration.Start().ok());
  CHECK(registration.socket_path() == socket);
  struct stat st {};
  REQUIRE(IsSocket(socket, &st));
  CHECK((st.st_mode & 0777) == 0600);

  FakeKubeletClient kubelet(socket);
  ::pluginregistration::PluginInfo info;
  const grpc::Status status = kubelet.GetInfo(&info);
  REQUIRE(status.ok());
  CHECK(info.type() == "CSIPlugin");
  CHECK(info.name() == "pmem-csi.ephemera.io");
  CHECK(info.endpoint() == kKubeletEndpoint);
  REQUIRE(info.supported_versions_size() == 1);
  CHECK(info.supported_versions(0) == "1.0.0");

  // Not ready until the kubelet says it registered the driver.
  CHECK(registration.state().phase == Phase::kWaiting);
  CHECK(registration.ReadinessCheck().code() == Code::kUnavailable);
  CHECK(MetricLine(metrics, "ephemera_pmem_kubelet_registered ") ==
        "ephemera_pmem_kubelet_registered 0");

  registration.Stop();
  CHECK_FALSE(IsSocket(socket));
  CHECK(access(socket.c_str(), F_OK) != 0);
  registration.Stop();  // idempotent
}

TEST_CASE("kubelet registration: a refusal is kept, shown and counted / success makes it ready",
          "[csi][registration]") {
  TempDir dir;
  Metrics metrics;
  KubeletRegistration registration(TestOptions(dir.path()), &metrics);
  REQUIRE(registration.Start().ok());
  FakeKubeletClient kubelet(registration.socket_path());

  REQUIRE(kubelet.Notify(false, "x").ok());
  KubeletRegistration::State state = registration.state();
  CHECK(state.phase == Phase::kRefused);
  CHECK(state.error == "x");
  CHECK(state.refusals == 1);
  const Status refused = registration.ReadinessCheck();
  CHECK(refused.code() == Code::kUnavailable);
  CHECK(refused.message() == "the kubelet refused the registration: x");
  CHECK(MetricLine(metrics, "ephemera_pmem_kubelet_registered ") ==
        "ephemera_pmem_kubelet_registered 0");
  CHECK(MetricLine(metrics, "ephemera_pmem_kubelet_registration_refusals_total ") ==
        "ephemera_pmem_kubelet_registration_refusals_total 1");
  // Still serving: the kubelet retries.
  ::pluginregistration::PluginInfo info;
  CHECK(kubelet.GetInfo(&info).ok());

  // A hostile reason: control characters, bytes that are not UTF-8 (the kubelet's library would
  // refuse them, a stranger's need not), far too long. Shortened and made printable.
  std::string hostile = "bad\n\x1b[31mred\xff";
  hostile += std::string(5000, 'A');
  const grpc::Status sent = kubelet.Notify(false, hostile);
  if (sent.ok()) {
    state = registration.state();
    CHECK(state.refusals == 2);
    CHECK(state.error.size() == KubeletRegistration::kMaxErrorLength + 3);
    CHECK(state.error.starts_with("bad??[31mred?AAA"));
    CHECK(state.error.ends_with("A..."));
  } else {
    // protobuf may refuse the non-UTF-8 string outright: nothing recorded then.
    CHECK(registration.state().refusals == 1);
  }
  // Larger than any message of this API: refused by gRPC, the state is untouched.
  const int64_t before = registration.state().refusals;
  CHECK(kubelet.Notify(false, std::string(size_t{100} * 1024, 'B')).error_code() ==
        grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK(registration.state().refusals == before);

  REQUIRE(kubelet.Notify(true, "").ok());
  state = registration.state();
  CHECK(state.phase == Phase::kRegistered);
  CHECK(state.error.empty());
  CHECK(registration.ReadinessCheck().ok());
  CHECK(MetricLine(metrics, "ephemera_pmem_kubelet_registered ") ==
        "ephemera_pmem_kubelet_registered 1");
}

TEST_CASE("kubelet registration: a removed socket is re-created, the kubelet's verdict reset",
          "[csi][registration]") {
  TempDir dir;
  KubeletRegistration registration(TestOptions(dir.path()), nullptr);
  REQUIRE(registration.Start().ok());
  const std::string socket = registration.socket_path();
  REQUIRE(FakeKubeletClient(socket).Notify(true, "").ok());
  REQUIRE(registration.ReadinessCheck().ok());

  // Present: nothing to do.
  struct stat first {};
  REQUIRE(IsSocket(socket, &first));
  REQUIRE(registration.EnsureSocket().ok());
  CHECK(registration.state().recreated == 0);

  REQUIRE(unlink(socket.c_str()) == 0);
  REQUIRE(registration.EnsureSocket().ok());
  struct stat second {};
  REQUIRE(IsSocket(socket, &second));
  CHECK((second.st_mode & 0777) == 0600);
  CHECK(registration.state().recreated == 1);
  // A new socket is a new plugin to the kubelet: waiting for its word again.
  CHECK(registration.state().phase == Phase::kWaiting);
  CHECK(registration.ReadinessCheck().code() == Code::kUnavailable);

  // The new socket serves, and stays: the old server's shutdown did not take it with it.
  ::pluginregistration::PluginInfo info;
  REQUIRE(FakeKubeletClient(socket).GetInfo(&info).ok());
  CHECK(info.name() == "pmem-csi.ephemera.io");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  REQUIRE(IsSocket(socket));
  REQUIRE(FakeKubeletClient(socket).Notify(true, "").ok());
  CHECK(registration.ReadinessCheck().ok());
  // Nothing but the socket in the directory (no hidden name left behind).
  size_t entries = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    CHECK(entry.path().filename() == "pmem-csi.ephemera.io-reg.sock");
    ++entries;
  }
  CHECK(entries == 1);
}

TEST_CASE("kubelet registration: the periodic check re-creates the socket on its own",
          "[csi][registration]") {
  TempDir dir;
  KubeletRegistration::Options options = TestOptions(dir.path());
  options.check_interval = std::chrono::milliseconds(100);
  KubeletRegistration registration(options, nullptr);
  REQUIRE(registration.Start().ok());
  const std::string socket = registration.socket_path();
  for (int round = 1; round <= 3; ++round) {
    REQUIRE(unlink(socket.c_str()) == 0);
    // Generous for a busy machine; done after one interval when it is not.
    for (int i = 0; i < 300 && !IsSocket(socket); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    REQUIRE(IsSocket(socket));
    ::pluginregistration::PluginInfo info;
    CHECK(FakeKubeletClient(socket).GetInfo(&info).ok());
    CHECK(registration.state().recreated == round);
  }
  registration.Stop();
  CHECK(access(socket.c_str(), F_OK) != 0);
}

TEST_CASE("kubelet registration: Stop leaves a successor's socket alone", "[csi][registration]") {
  TempDir dir;
  KubeletRegistration registration(TestOptions(dir.path()), nullptr);
  REQUIRE(registration.Start().ok());
  const std::string socket = registration.socket_path();
  // Another instance took the name (removed ours and bound its own).
  REQUIRE(unlink(socket.c_str()) == 0);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", socket.c_str());
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  struct stat theirs {};
  REQUIRE(IsSocket(socket, &theirs));
  REQUIRE(registration.EnsureSocket().ok());  // a file is there: not ours to replace
  registration.Stop();
  struct stat after {};
  CHECK(IsSocket(socket, &after));
  CHECK(after.st_ino == theirs.st_ino);
  close(fd);
}

TEST_CASE("kubelet registration: paths are checked", "[csi][registration]") {
  KubeletRegistration::Options options = TestOptions("/registration");
  CHECK(KubeletRegistration::Validate(options).ok());
  options.kubelet_endpoint = "csi.sock";
  CHECK(KubeletRegistration::Validate(options).message().starts_with(
      "--kubelet-registration-path: must be an absolute path"));
  options.kubelet_endpoint = "/" + std::string(120, 'k');
  CHECK(KubeletRegistration::Validate(options).message().starts_with(
      "--kubelet-registration-path: longer than 107 bytes"));
  options = TestOptions("registration");
  CHECK(KubeletRegistration::Validate(options).message().starts_with(
      "--plugin-registration-path: must be an absolute path"));
  // The socket's path may have 99 bytes (the temporary name bound first has 8 more).
  const std::string name = "/pmem-csi.ephemera.io-reg.sock";
  options = TestOptions("/" + std::string(99 - name.size() - 1, 'r'));
  CHECK(KubeletRegistration::Validate(options).ok());
  options = TestOptions("/" + std::string(99 - name.size(), 'r'));
  CHECK(KubeletRegistration::Validate(options).message() ==
        "--plugin-registration-path: the registration socket's path would be 100 bytes; at most "
        "99 work (a Unix socket path has at most 107 bytes, and a temporary name 8 bytes longer "
        "is bound first)");
  // A directory that does not exist: Start fails and says which socket.
  KubeletRegistration missing(TestOptions("/nonexistent-ephemera-dir"), nullptr);
  const Status started = missing.Start();
  CHECK(started.code() == Code::kInternal);
  CHECK(started.message().find("/nonexistent-ephemera-dir/pmem-csi.ephemera.io-reg.sock") !=
        std::string::npos);
}

TEST_CASE("CSI liveness probe: answers through the socket file, fails without it",
          "[csi][registration]") {
  TempDir dir;
  const std::string socket = dir.path() + "/csi.sock";
  CHECK(ProbeCsiSocket(socket, std::chrono::milliseconds(500)).code() == Code::kUnavailable);

  IdentityService identity(/*volume_expansion=*/true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + socket, grpc::InsecureServerCredentials());
  builder.RegisterService(&identity);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  REQUIRE(server);
  const Status alive = ProbeCsiSocket(socket, std::chrono::seconds(5));
  INFO(alive.ToString());
  CHECK(alive.ok());
  // The server still listens, but nobody can reach it through the file any more.
  REQUIRE(std::rename(socket.c_str(), (socket + ".moved").c_str()) == 0);
  const Status gone = ProbeCsiSocket(socket, std::chrono::milliseconds(500));
  CHECK(gone.code() == Code::kUnavailable);
  CHECK(gone.message().starts_with("Probe on the CSI socket " + socket + ": "));
  REQUIRE(std::rename((socket + ".moved").c_str(), socket.c_str()) == 0);
  CHECK(ProbeCsiSocket(socket, std::chrono::seconds(5)).ok());
  server->Shutdown();
}

}  // namespace
}  // namespace ephemera::csi
