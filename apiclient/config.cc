#include "apiclient/config.h"

#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "common/base64.h"

namespace ephemera::apiclient {
namespace {

StatusOr<std::string> ReadFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("cannot read " + what + " " + path);
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::string Resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || path[0] == '/' || base_dir.empty()) return path;
  return base_dir + "/" + path;
}

// The named entry of a kubeconfig list (clusters, users, contexts): [{name: x, <key>: {...}}].
StatusOr<YAML::Node> FindNamed(const YAML::Node& root, const char* list, const char* key,
                               const std::string& name) {
  const YAML::Node entries = root[list];
  if (entries && entries.IsSequence()) {
    for (const auto& entry : entries) {
      if (entry.IsMap() && entry["name"] && entry["name"].as<std::string>() == name) {
        const YAML::Node value = entry[key];
        if (!value || !value.IsMap()) {
          return Status::InvalidArgument(std::string(list) + " entry \"" + name + "\" has no " +
                                         key + " map");
        }
        return value;
      }
    }
  }
  return Status::InvalidArgument(std::string("no entry named \"") + name + "\" in " + list);
}

std::string Str(const YAML::Node& map, const char* key) {
  const YAML::Node v = map[key];
  return v && v.IsScalar() ? v.as<std::string>() : std::string();
}

// Either KEY-data (base64) or KEY (a file path). Empty when neither is set.
StatusOr<std::string> DataOrFile(const YAML::Node& map, const std::string& key,
                                 const std::string& base_dir) {
  const std::string data = Str(map, (key + "-data").c_str());
  if (!data.empty()) {
    auto decoded = Base64Decode(data);
    if (!decoded.ok()) return decoded.status().WithContext(key + "-data");
    return decoded;
  }
  const std::string file = Str(map, key.c_str());
  if (file.empty()) return std::string();
  return ReadFile(Resolve(base_dir, file), key);
}

// A user's `exec` section, as client-go reads it.
StatusOr<ExecConfig> ParseExec(const YAML::Node& node, const std::string& base_dir) {
  if (!node.IsMap()) return Status::InvalidArgument("exec is not a map");
  ExecConfig exec;
  exec.command = Str(node, "command");
  if (exec.command.empty()) return Status::InvalidArgument("exec has no command");
  // A command with a '/' is a path, relative ones to the kubeconfig's folder; others are looked
  // up in $PATH when run.
  if (exec.command.find('/') != std::string::npos) exec.command = Resolve(base_dir, exec.command);
  exec.api_version = Str(node, "apiVersion");
  if (exec.api_version != kExecApiV1 && exec.api_version != kExecApiV1beta1) {
    return Status::InvalidArgument("exec apiVersion \"" + exec.api_version.substr(0, 100) +
                                   "\" is not supported; use " + std::string(kExecApiV1) + " or " +
                                   std::string(kExecApiV1beta1));
  }
  if (const YAML::Node args = node["args"]; args && !args.IsNull()) {
    if (!args.IsSequence()) return Status::InvalidArgument("exec args is not a list");
    for (const auto& arg : args) {
      if (!arg.IsScalar())
        return Status::InvalidArgument("exec args has an entry that is no string");
      exec.args.push_back(arg.as<std::string>());
    }
  }
  if (const YAML::Node env = node["env"]; env && !env.IsNull()) {
    if (!env.IsSequence()) return Status::InvalidArgument("exec env is not a list");
    for (const auto& var : env) {
      const std::string name = var.IsMap() ? Str(var, "name") : "";
      if (name.empty() || name.find('=') != std::string::npos) {
        return Status::InvalidArgument("exec env has an entry without a valid name");
      }
      exec.env.emplace_back(name, Str(var, "value"));
    }
  }
  exec.install_hint = Str(node, "installHint");
  exec.provide_cluster_info = Str(node, "provideClusterInfo") == "true";
  exec.interactive_mode = Str(node, "interactiveMode");
  if (!exec.interactive_mode.empty() && exec.interactive_mode != "Never" &&
      exec.interactive_mode != "IfAvailable" && exec.interactive_mode != "Always") {
    return Status::InvalidArgument("exec interactiveMode \"" + exec.interactive_mode.substr(0, 50) +
                                   "\" is not one of Never, IfAvailable, Always");
  }
  if (exec.interactive_mode == "Always") {
    return Status::FailedPrecondition(
        "exec plugin \"" + exec.command.substr(0, 200) +
        "\" has interactiveMode Always, but ephemera never runs it with a terminal; use Never or "
        "IfAvailable");
  }
  return exec;
}

}  // namespace

StatusOr<std::string> TokenFile::Token() {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  if (mtime_ns_ >= 0 && now - checked_ < std::chrono::seconds(1)) return token_;
  checked_ = now;
  struct stat st {};
  if (stat(path_.c_str(), &st) != 0) {
    if (mtime_ns_ >= 0) return token_;  // Keep the last token while the file is being replaced.
    return Status::Unauthenticated("cannot read token file " + path_);
  }
  const int64_t mtime = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
  if (mtime == mtime_ns_) return token_;
  auto text = ReadFile(path_, "token file");
  if (!text.ok()) {
    if (mtime_ns_ >= 0) return token_;
    return Status::Unauthenticated(text.status().message());
  }
  std::string token = *text;
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) {
    token.pop_back();
  }
  token_ = std::move(token);
  mtime_ns_ = mtime;
  return token_;
}

StatusOr<std::string> RestConfig::CurrentToken() const {
  if (exec) {
    auto credential = exec->Get();
    if (!credential.ok()) return credential.status();
    if (!(*credential)->token.empty()) return (*credential)->token;
  }
  if (token_file) return token_file->Token();
  return bearer_token;
}

std::string RestConfig::DescribeForLog() const {
  std::string auth;
  if (!client_cert_pem.empty()) auth = "client certificate";
  if (!bearer_token.empty()) auth += auth.empty() ? "bearer token" : " + bearer token";
  if (token_file) auth += (auth.empty() ? "token file " : " + token file ") + token_file->path();
  if (exec) {
    auth += (auth.empty() ? "exec plugin " : " + exec plugin ") + exec->config().command + " (" +
            exec->config().api_version + ")";
  }
  if (auth.empty()) auth = "anonymous";
  return "server " + server + ", auth: " + auth + (ca_pem.empty() ? ", system CAs" : ", custom CA");
}

StatusOr<RestConfig> ParseKubeconfig(const std::string& text, const std::string& base_dir,
                                     const std::string& context_flag) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument(std::string("kubeconfig is not valid YAML: ") + e.what());
  }
  if (!root.IsMap()) return Status::InvalidArgument("kubeconfig is not a YAML map");
  try {
    const std::string context_name =
        context_flag.empty() ? Str(root, "current-context") : context_flag;
    if (context_name.empty()) {
      return Status::InvalidArgument("kubeconfig has no current-context and none was given");
    }
    auto context = FindNamed(root, "contexts", "context", context_name);
    if (!context.ok()) return context.status().WithContext("kubeconfig");
    const std::string cluster_name = Str(*context, "cluster");
    const std::string user_name = Str(*context, "user");
    auto cluster = FindNamed(root, "clusters", "cluster", cluster_name);
    if (!cluster.ok()) return cluster.status().WithContext("kubeconfig");

    RestConfig config;
    config.default_namespace = Str(*context, "namespace");
    config.server = Str(*cluster, "server");
    if (config.server.rfind("https://", 0) != 0) {
      return Status::InvalidArgument("kubeconfig: cluster \"" + cluster_name +
                                     "\" server must be an https:// URL, not \"" +
                                     config.server.substr(0, 100) + "\"");
    }
    while (!config.server.empty() && config.server.back() == '/')
      config.server.pop_back();
    if (Str(*cluster, "insecure-skip-tls-verify") == "true") {
      return Status::InvalidArgument(
          "kubeconfig: cluster \"" + cluster_name +
          "\" sets insecure-skip-tls-verify; ephemera always verifies the server certificate");
    }
    config.tls_server_name = Str(*cluster, "tls-server-name");
    auto ca = DataOrFile(*cluster, "certificate-authority", base_dir);
    if (!ca.ok()) return ca.status().WithContext("kubeconfig cluster \"" + cluster_name + "\"");
    config.ca_pem = *ca;

    if (!user_name.empty()) {
      auto user = FindNamed(root, "users", "user", user_name);
      if (!user.ok()) return user.status().WithContext("kubeconfig");
      const std::string where = "kubeconfig user \"" + user_name + "\"";
      if ((*user)["exec"]) {
        auto exec = ParseExec((*user)["exec"], base_dir);
        if (!exec.ok()) return exec.status().WithContext(where);
        config.exec = std::make_shared<ExecCredentialProvider>(
            std::move(*exec),
            ExecClusterInfo{config.server, config.tls_server_name, config.ca_pem});
      }
      if ((*user)["auth-provider"]) {
        return Status::Unimplemented(where + " uses an auth-provider, which is not supported");
      }
      if ((*user)["username"] || (*user)["password"]) {
        return Status::Unimplemented(where + " uses basic auth, which is not supported");
      }
      auto cert = DataOrFile(*user, "client-certificate", base_dir);
      if (!cert.ok()) return cert.status().WithContext(where);
      auto key = DataOrFile(*user, "client-key", base_dir);
      if (!key.ok()) return key.status().WithContext(where);
      if (cert->empty() != key->empty()) {
        return Status::InvalidArgument(where + " needs both a client certificate and its key");
      }
      config.client_cert_pem = *cert;
      config.client_key_pem = *key;
      config.bearer_token = Str(*user, "token");
      const std::string token_file = Str(*user, "tokenFile");
      if (config.bearer_token.empty() && !token_file.empty()) {
        config.token_file = std::make_shared<TokenFile>(Resolve(base_dir, token_file));
      }
    }
    return config;
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument(std::string("kubeconfig has an unexpected shape: ") + e.what());
  }
}

StatusOr<RestConfig> LoadKubeconfig(const std::string& path, const std::string& context) {
  auto text = ReadFile(path, "kubeconfig");
  if (!text.ok()) return text.status();
  const auto slash = path.rfind('/');
  const std::string base_dir = slash == std::string::npos ? "." : path.substr(0, slash);
  auto config = ParseKubeconfig(*text, base_dir, context);
  if (!config.ok()) return config.status().WithContext(path);
  return config;
}

StatusOr<RestConfig> InClusterConfig(const std::string& sa_dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");  // NOLINT(concurrency-mt-unsafe)
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");  // NOLINT(concurrency-mt-unsafe)
  if (host == nullptr || port == nullptr || *host == '\0' || *port == '\0') {
    return Status::FailedPrecondition(
        "not running in a pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set");
  }
  RestConfig config;
  const std::string h = host;
  // An IPv6 address needs brackets in a URL.
  config.server = "https://" + (h.find(':') != std::string::npos ? "[" + h + "]" : h) + ":" + port;
  auto ca = ReadFile(sa_dir + "/ca.crt", "service account CA");
  if (!ca.ok()) return ca.status();
  config.ca_pem = *ca;
  config.token_file = std::make_shared<TokenFile>(sa_dir + "/token");
  auto token = config.token_file->Token();
  if (!token.ok()) return token.status();
  if (auto ns = ReadFile(sa_dir + "/namespace", "service account namespace"); ns.ok()) {
    config.default_namespace = *ns;
    while (!config.default_namespace.empty() &&
           std::isspace(static_cast<unsigned char>(config.default_namespace.back())) != 0) {
      config.default_namespace.pop_back();
    }
  }
  return config;
}

StatusOr<RestConfig> LoadConfig(const std::string& kubeconfig_flag, const std::string& context) {
  if (!kubeconfig_flag.empty()) return LoadKubeconfig(kubeconfig_flag, context);
  const char* env = std::getenv("KUBECONFIG");  // NOLINT(concurrency-mt-unsafe)
  if (env != nullptr && *env != '\0') {
    std::string first(env);
    first = first.substr(0, first.find(':'));  // The first file of a KUBECONFIG list.
    return LoadKubeconfig(first, context);
  }
  if (std::getenv("KUBERNETES_SERVICE_HOST") != nullptr) {  // NOLINT(concurrency-mt-unsafe)
    return InClusterConfig();
  }
  const char* home = std::getenv("HOME");  // NOLINT(concurrency-mt-unsafe)
  if (home == nullptr) {
    return Status::FailedPrecondition("no --kubeconfig, no $KUBECONFIG, not in a pod, no $HOME");
  }
  return LoadKubeconfig(std::string(home) + "/.kube/config", context);
}

}  // namespace ephemera::apiclient
