// The configuration of ephemera-pmem-csi, filled from the command line by main through
// DriverFlags().
//
// Thread safety: a value; read-only once the driver runs.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/flags.h"

namespace ephemera::csi {

struct Config {
  std::string mode = "node";  // only "node": Identity, Controller and Node on one socket
  std::string endpoint;       // unix:///path/to/csi.sock
  std::string node_id;
  std::string backend = "file";  // file | direct | lvm
  std::string state_dir = "/var/lib/ephemera-pmem-csi/state";
  // file backend
  std::string file_dir = "/var/lib/ephemera-pmem-csi/files";
  int64_t file_capacity = 0;  // bytes; required for the file backend
  // lvm backend: the share of each PMEM region its namespace covers, 1..100
  int pmem_percentage = 100;
  int64_t default_volume_size = 1LL << 30;
  bool remove_orphans = false;
  // The time limit of every external command; unset: each kind's default (command_runner.h).
  std::optional<std::chrono::milliseconds> command_timeout;
  // observability
  std::string http_endpoint;  // HOST:PORT for /metrics, /healthz, /readyz; off when empty
  // read-only capacity listener with mutual TLS; off when empty
  std::string capacity_listen;  // HOST:PORT
  std::string tls_ca, tls_cert, tls_key;
  // Registration with the kubelet (csi/kubelet_registration.h); off when the first is empty.
  std::string kubelet_registration_path;  // the CSI socket's path on the host, as kubelet dials it
  std::string plugin_registration_path = "/registration";  // directory of the registration socket
  // logging (common/log.h)
  std::string logging_format = "text";  // text | json
  int verbosity = 0;
};

// Every flag of the driver, each bound to its field of `config`.
std::vector<flags::Flag> DriverFlags(Config& config);
// The Go flag package's spelling, as the controller-manager's: "-v 2" as well as "--v=2".
constexpr flags::Syntax kDriverSyntax{.single_dash_long = true};

}  // namespace ephemera::csi
