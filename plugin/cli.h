// kubectl-ephemera's command line: flags, the commands, and what each prints. main() only hands
// argv and the real API client to Run(); unit tests hand a fake client.
//
// Exit codes: 0 success, 1 the command failed (cluster unreachable, forbidden, ...), 2 bad usage.
// Every error goes to stderr as "error: ...", output to stdout.
//
// Thread safety: none needed (one command per process).
#pragma once

#include <chrono>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "apiclient/client.h"
#include "common/status.h"

namespace ephemera::plugin {

struct Options {
  std::string command;  // "capacity", "volumes" or "" (help)
  std::string kubeconfig;
  std::string context;
  std::string ns;  // -n; "" = the kubeconfig context's namespace (volumes) or all (capacity)
  bool all_namespaces = false;
  std::string output;  // "" (table) or "json"
  std::string driver;  // "" = kDefaultDriver
  bool help = false;
};

// Parses the arguments after the program name. Flags may come before or after the command, as
// "--flag value", "--flag=value", "-n value" or "-nvalue". INVALID_ARGUMENT names what is wrong.
StatusOr<Options> ParseArgs(const std::vector<std::string>& args);

std::string Usage();

// A connection to the cluster for the given options.
struct Connection {
  apiclient::ApiClientPtr client;
  std::string default_namespace;  // the kubeconfig context's (or the pod's), else "default"
  std::string server;             // for messages
  // GET of a non-object path as text (a pod's /metrics through the API server's proxy); empty:
  // not available (the confirmation times are then unknown).
  std::function<StatusOr<std::string>(const std::string& path)> get_text;
};
using Connector = std::function<StatusOr<Connection>(const Options&)>;

// The real connector: the kubeconfig as kubectl finds it (--kubeconfig, the first file of
// $KUBECONFIG, in-cluster, ~/.kube/config) and a RestClient.
StatusOr<Connection> ConnectToCluster(const Options& options);

// Runs a command line; returns the exit code.
int Run(const std::vector<std::string>& args, const Connector& connect, std::ostream& out,
        std::ostream& err,
        std::chrono::system_clock::time_point now = std::chrono::system_clock::now());

}  // namespace ephemera::plugin
