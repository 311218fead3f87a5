#include "csi/config.h"

#include "csi/command_runner.h"

namespace ephemera::csi {

std::vector<flags::Flag> DriverFlags(Config& c) {
  using namespace flags;  // NOLINT(google-build-using-namespace): the table reads better
  return {
      String("mode", &c.mode),
      String("endpoint", &c.endpoint),
      String("node-id", &c.node_id),
      String("backend", &c.backend),
      Int("pmem-percentage", &c.pmem_percentage, {.min = 1, .max = 100}),
      String("state-dir", &c.state_dir),
      String("file-dir", &c.file_dir),
      Bytes("file-capacity", &c.file_capacity),
      Bytes("default-volume-size", &c.default_volume_size),
      Bool("remove-orphans", &c.remove_orphans),
      Custom("command-timeout",
             [&c](const std::string& v) -> Status {
               auto timeout = ParseCommandTimeout(v);
               if (!timeout.ok()) return timeout.status();
               c.command_timeout = *timeout;
               return Status::Ok();
             }),
      String("http-endpoint", &c.http_endpoint),
      String("capacity-listen", &c.capacity_listen),
      String("tls-ca", &c.tls_ca),
      String("tls-cert", &c.tls_cert),
      String("tls-key", &c.tls_key),
      String("kubelet-registration-path", &c.kubelet_registration_path),
      String("plugin-registration-path", &c.plugin_registration_path),
      OneOf("logging-format", &c.logging_format, {"text", "json"}),
      Int("v", &c.verbosity, {.min = 0}),
  };
}

}  // namespace ephemera::csi
