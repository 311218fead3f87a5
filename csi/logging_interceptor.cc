// Logging and latency interceptor (see logging_interceptor.h).
#include "csi/logging_interceptor.h"

#include <chrono>

#include "common/log.h"
#include "common/status.h"

namespace ephemera::csi {

namespace {

using grpc::experimental::InterceptionHookPoints;

class LoggingInterceptor : public grpc::experimental::Interceptor {
 public:
  LoggingInterceptor(std::string method, Metrics* metrics)
      : method_(std::move(method)), metrics_(metrics), start_(std::chrono::steady_clock::now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      grpc::Status status = methods->GetSendStatus();
      double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      std::string code(CodeName(static_cast<Code>(status.error_code())));
      if (metrics_ != nullptr) metrics_->ObserveOperation(method_, code, seconds);
      log::Fields fields = {{"method", method_},
                            {"code", code},
                            {"us", std::to_string(static_cast<int64_t>(seconds * 1e6))}};
      if (!status.ok()) fields.emplace_back("message", status.error_message());
      log::Info("grpc", fields);
    }
    methods->Proceed();
  }

 private:
  std::string method_;
  Metrics* metrics_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

grpc::experimental::Interceptor* LoggingInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new LoggingInterceptor(info->method(), metrics_);
}

}  // namespace ephemera::csi
