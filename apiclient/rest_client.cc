#include "apiclient/rest_client.h"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <optional>
#include <thread>

#include "apiclient/deadline.h"
#include "apiclient/errors.h"
#include "apiclient/field_filter.h"
#include "apiclient/https_transport.h"

namespace ephemera::apiclient {
namespace {

std::string Query(std::initializer_list<std::pair<const char*, std::string>> params) {
  std::string q;
  for (const auto& [key, value] : params) {
    if (value.empty()) continue;
    q += q.empty() ? "?" : "&";
    q += key;
    q += "=";
    q += QueryEscape(value);
  }
  return q;
}

Status CheckNames(const std::string& ns, const std::string& name, const Resource& resource) {
  if (resource.namespaced && !ns.empty() && !IsSafePathSegment(ns)) {
    return Status::InvalidArgument("invalid namespace \"" + ns.substr(0, 64) + "\"");
  }
  if (!IsSafePathSegment(name)) {
    return Status::InvalidArgument("invalid " + resource.kind + " name \"" + name.substr(0, 64) +
                                   "\"");
  }
  return Status::Ok();
}

StatusOr<Object> ParseJson(const std::string& body, std::string_view what) {
  auto parsed = Object::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    return Status::Internal(std::string(what) + ": the server's answer is not a JSON object");
  }
  return parsed;
}

std::string ObjectNamespace(const Object& object, const std::string& ns) {
  const std::string from_object = Field(object, "metadata", "namespace");
  return from_object.empty() ? ns : from_object;
}

// An open watch: reads the chunked response line by line.
class RestWatchStream final : public WatchStream {
 public:
  RestWatchStream(std::unique_ptr<StreamingResponse> response, std::string what,
                  const std::shared_ptr<const FieldFilter>& filter)
      : envelope_filter_(filter == nullptr ? nullptr
                                           : std::make_unique<FieldFilter>(FieldFilter{
                                                 {"type", FieldFilter()}, {"object", *filter}})),
        response_(std::move(response)),
        what_(std::move(what)) {}

  ~RestWatchStream() override { Stop(); }

  bool Next(WatchEvent* event, Status* error) override {
    while (true) {
      if (stopped_.load()) {
        *error = Status::Cancelled(what_ + ": stopped");
        return false;
      }
      std::string text;
      auto line = ReadLine(&text);
      if (!line.ok()) {
        *error = stopped_.load() ? Status::Cancelled(what_ + ": stopped")
                                 : Status::Unavailable(what_ + ": " + line.status().message());
        return false;
      }
      const bool eof = !*line;
      if (stopped_.load()) {  // Stop() during the read: deliver nothing more.
        *error = Status::Cancelled(what_ + ": stopped");
        return false;
      }
      if (eof) {
        *error = Status::Ok();
        return false;
      }
      if (text.empty()) continue;  // An empty line between events.
      return DecodeWatchEventLine(text, envelope_filter_.get(), what_, event, error);
    }
  }

  void Stop() override {
    stopped_.store(true);
    response_->Cancel();
  }

 private:
  // Reads the next line (without its newline) into *line; false at the end of the stream. Takes
  // whatever the connection has delivered in one piece and splits lines here.
  StatusOr<bool> ReadLine(std::string* line) {
    size_t scanned = 0;
    while (true) {
      const size_t newline = pending_.find('\n', scanned);
      if (newline != std::string::npos) {
        line->assign(pending_, 0, newline);
        pending_.erase(0, newline + 1);
        return true;
      }
      scanned = pending_.size();
      if (scanned > kMaxLine)
        return Status::ResourceExhausted("a watch event is longer than 64 MiB");
      auto more = response_->ReadSome(&pending_);
      if (!more.ok()) return more.status();
      if (!*more) {
        if (pending_.empty()) return false;
        line->swap(pending_);
        pending_.clear();
        return true;
      }
    }
  }

  const std::unique_ptr<const FieldFilter> envelope_filter_;  // {type, object: the caller's}
  const std::unique_ptr<StreamingResponse> response_;
  const std::string what_;
  std::atomic<bool> stopped_{false};
  static constexpr size_t kMaxLine = 64 << 20;
  std::string pending_;  // read from the stream, not yet returned as a line
};

}  // namespace

bool DecodeWatchEventLine(const std::string& text, const FieldFilter* envelope_filter,
                          const std::string& what, WatchEvent* event, Status* error) {
  auto parsed = ParseFiltered(text, envelope_filter);
  if (!parsed.is_object()) {
    *error = Status::Internal(what + ": a watch event is not JSON");
    return false;
  }
  const auto type_field = parsed.find("type");
  const std::string type =
      type_field != parsed.end() && type_field->is_string() ? type_field->get<std::string>() : "";
  if (type == "ERROR" && envelope_filter != nullptr) {
    parsed = Object::parse(text, nullptr, /*allow_exceptions=*/false);  // a Status: read it all
    if (!parsed.is_object()) {
      *error = Status::Internal(what + ": a watch event is not JSON");
      return false;
    }
  }
  auto object = parsed.find("object");
  if (object == parsed.end() || !object->is_object()) {
    *error = Status::Internal(what + ": a watch event has no object");
    return false;
  }
  if (type == "ERROR") {
    const auto code_field = object->find("code");
    const int code = code_field != object->end() && code_field->is_number_integer()
                         ? code_field->get<int>()
                         : 500;
    *error = StatusFromHttp(code, object->dump(), what);
    return false;
  }
  if (type == "ADDED") {
    event->type = WatchEvent::Type::kAdded;
  } else if (type == "MODIFIED") {
    event->type = WatchEvent::Type::kModified;
  } else if (type == "DELETED") {
    event->type = WatchEvent::Type::kDeleted;
  } else if (type == "BOOKMARK") {
    event->type = WatchEvent::Type::kBookmark;
  } else {
    *error = Status::Internal(what + ": unknown watch event type \"" + type.substr(0, 32) + "\"");
    return false;
  }
  event->object = std::make_shared<Object>(std::move(*object));
  return true;
}

std::string_view WatchEventTypeName(WatchEvent::Type type) {
  switch (type) {
    case WatchEvent::Type::kAdded:
      return "ADDED";
    case WatchEvent::Type::kModified:
      return "MODIFIED";
    case WatchEvent::Type::kDeleted:
      return "DELETED";
    case WatchEvent::Type::kBookmark:
      return "BOOKMARK";
  }
  return "UNKNOWN";
}

StatusOr<std::shared_ptr<RestClient>> RestClient::New(RestConfig config, RequestObserver observer) {
  HttpsOptions options;
  options.ca_pem = config.ca_pem;
  options.client_cert_pem = config.client_cert_pem;
  options.client_key_pem = config.client_key_pem;
  options.verify_name = config.tls_server_name;
  auto transport = HttpsTransport::New(config.server, options);
  if (!transport.ok()) return transport.status();
  return std::shared_ptr<RestClient>(
      new RestClient(std::move(config), std::move(observer), std::move(*transport)));
}

RestClient::RestClient(RestConfig config, RequestObserver observer,
                       std::unique_ptr<HttpsTransport> transport)
    : config_(std::move(config)),
      observer_(std::move(observer)),
      limiter_(config_.qps, config_.burst),
      transport_(std::move(transport)) {}

RestClient::~RestClient() = default;

size_t RestClient::connections_opened() const {
  return transport_->connections_opened();
}

StatusOr<std::string> RestClient::Authorization(std::shared_ptr<const ExecCredential>* used) {
  if (config_.exec != nullptr) {
    auto credential = config_.exec->Get();
    if (!credential.ok()) return credential.status().WithContext("getting credentials");
    *used = *credential;
    const ExecCredential& c = **credential;
    if (!c.client_cert_pem.empty()) {
      std::lock_guard<std::mutex> lock(cert_mu_);
      if (c.client_cert_pem != exec_cert_pem_) {
        const Status set = transport_->SetClientCertificate(c.client_cert_pem, c.client_key_pem);
        if (!set.ok()) {
          config_.exec->Invalidate(*used);
          return set.WithContext("getting credentials: exec credential plugin \"" +
                                 config_.exec->config().command + "\"");
        }
        exec_cert_pem_ = c.client_cert_pem;
      }
    }
    if (!c.token.empty()) return "Bearer " + c.token;
  }
  std::string token;
  if (config_.token_file) {
    auto from_file = config_.token_file->Token();
    if (!from_file.ok()) return from_file.status();
    token = std::move(*from_file);
  } else {
    token = config_.bearer_token;
  }
  return token.empty() ? std::string() : "Bearer " + token;
}

StatusOr<RestClient::RawResponse> RestClient::Do(std::string_view method, std::string_view verb,
                                                 const std::string& path, const std::string* body,
                                                 std::string_view content_type) {
  const bool idempotent = method == "GET";
  const std::string what = std::string(verb) + " " + path.substr(0, path.find('?'));
  constexpr int kMaxThrottleRetries = 10;
  constexpr int kMaxTransportRetries = 3;
  const ExponentialBackoff transport_backoff(std::chrono::milliseconds(200),
                                             std::chrono::seconds(2));
  int throttle_retries = 0;
  int transport_retries = 0;
  const std::optional<std::chrono::steady_clock::time_point> deadline =
      ScopedRequestDeadline::Current();
  // How long the request may still take: the request timeout, or less under a deadline.
  auto time_left = [&]() -> std::chrono::milliseconds {
    if (!deadline) return config_.request_timeout;
    return std::min<std::chrono::milliseconds>(
        config_.request_timeout, std::chrono::duration_cast<std::chrono::milliseconds>(
                                     *deadline - std::chrono::steady_clock::now()));
  };
  auto past_deadline = [&what] { return Status::DeadlineExceeded(what + ": deadline passed"); };
  bool reauthenticated = false;
  while (true) {
    if (deadline) {
      const auto wait = limiter_.Reserve();
      if (std::chrono::steady_clock::now() + wait >= *deadline) return past_deadline();
      std::this_thread::sleep_for(wait);
    } else {
      limiter_.Wait();
    }
    const auto timeout = time_left();
    if (timeout <= std::chrono::milliseconds(0)) return past_deadline();
    std::shared_ptr<const ExecCredential> credential;
    auto authorization = Authorization(&credential);
    if (!authorization.ok())
      return Status(authorization.status().code(), what + ": " + authorization.status().message());
    const HttpRequestSpec request{.method = method,
                                  .target = path,
                                  .user_agent = config_.user_agent,
                                  .authorization = *authorization,
                                  .content_type = content_type,
                                  .body = body};
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&start] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    auto result = transport_->RoundTrip(request, timeout);
    if (!result.ok()) {
      if (observer_) observer_(verb, 0, elapsed());
      const auto delay = transport_backoff.Delay(transport_retries);
      if (idempotent && transport_retries < kMaxTransportRetries &&
          result.status().code() == Code::kUnavailable && time_left() > delay) {
        ++transport_retries;
        std::this_thread::sleep_for(delay);
        continue;
      }
      return Status(result.status().code(), what + ": " + result.status().message());
    }
    if (observer_) observer_(verb, result->code, elapsed());
    if (result->code == 401 && credential != nullptr && !reauthenticated) {
      // The plugin's credential was refused (revoked, or expired early): a new one, once.
      reauthenticated = true;
      config_.exec->Invalidate(credential);
      continue;
    }
    const bool throttled =
        result->code == 429 || (result->code >= 500 && !result->retry_after.empty());
    if (throttled && throttle_retries < kMaxThrottleRetries) {
      int seconds = 1;
      try {
        seconds = std::stoi(result->retry_after);
      } catch (...) {  // NOLINT(bugprone-empty-catch): a date or garbage: wait one second
      }
      seconds = std::clamp(seconds, 1, 10);
      if (time_left() <= std::chrono::seconds(seconds)) return past_deadline();
      ++throttle_retries;
      std::this_thread::sleep_for(std::chrono::seconds(seconds));
      continue;
    }
    return RawResponse{result->code, std::move(result->body)};
  }
}

StatusOr<Object> RestClient::DoJson(std::string_view method, std::string_view verb,
                                    const std::string& path, const std::string* body,
                                    std::string_view content_type) {
  auto raw = Do(method, verb, path, body, content_type);
  if (!raw.ok()) return raw.status();
  const std::string what = std::string(verb) + " " + path.substr(0, path.find('?'));
  if (raw->code < 200 || raw->code >= 300) return StatusFromHttp(raw->code, raw->body, what);
  return ParseJson(raw->body, what);
}

StatusOr<std::string> RestClient::GetText(const std::string& path) {
  auto raw = Do("GET", "GET", path, nullptr, "");
  if (!raw.ok()) return raw.status();
  if (raw->code < 200 || raw->code >= 300) {
    return StatusFromHttp(raw->code, raw->body, "GET " + path.substr(0, path.find('?')));
  }
  return std::move(raw->body);
}

StatusOr<ObjectPtr> RestClient::DoObject(std::string_view method, std::string_view verb,
                                         const std::string& path, const std::string* body,
                                         std::string_view content_type) {
  auto json = DoJson(method, verb, path, body, content_type);
  if (!json.ok()) return json.status();
  return std::make_shared<const Object>(std::move(*json));
}

StatusOr<ObjectPtr> RestClient::Get(const Resource& resource, const std::string& ns,
                                    const std::string& name) {
  EPHEMERA_RETURN_IF_ERROR(CheckNames(ns, name, resource));
  return DoObject("GET", "GET", resource.ObjectPath(ns, name), nullptr, "");
}

StatusOr<ListResult> RestClient::List(const Resource& resource, const std::string& ns,
                                      const ListOptions& options) {
  if (resource.namespaced && !ns.empty() && !IsSafePathSegment(ns)) {
    return Status::InvalidArgument("invalid namespace \"" + ns.substr(0, 64) + "\"");
  }
  const std::string path = resource.CollectionPath(ns) +
                           Query({{"labelSelector", options.label_selector},
                                  {"fieldSelector", options.field_selector},
                                  {"limit", options.limit > 0 ? std::to_string(options.limit) : ""},
                                  {"continue", options.continue_token},
                                  {"resourceVersion", options.resource_version}});
  StatusOr<Object> list = Status::Unknown("");
  if (options.filter == nullptr) {
    list = DoJson("GET", "LIST", path, nullptr, "");
  } else {
    auto raw = Do("GET", "LIST", path, nullptr, "");
    if (!raw.ok()) return raw.status();
    const std::string what = "LIST " + resource.CollectionPath(ns);
    if (raw->code < 200 || raw->code >= 300) return StatusFromHttp(raw->code, raw->body, what);
    const FieldFilter page_filter{{"metadata", FieldFilter()}, {"items", *options.filter}};
    Object parsed = ParseFiltered(raw->body, &page_filter);
    if (parsed.is_discarded() || !parsed.is_object()) {
      return Status::Internal(what + ": the server's answer is not a JSON object");
    }
    list = std::move(parsed);
  }
  if (!list.ok()) return list.status();
  ListResult result;
  Object& doc = *list;
  result.resource_version = Field(doc, "metadata", "resourceVersion");
  result.continue_token = Field(doc, "metadata", "continue");
  auto items = doc.find("items");
  if (items != doc.end() && items->is_array()) {
    result.items.reserve(items->size());
    for (auto& item : *items) {
      // Items of a list carry no kind/apiVersion; add them so that every object is whole.
      // Moved out of the list document, not copied: a large list is held once, not twice.
      auto object = std::make_shared<Object>(std::move(item));
      (*object)["apiVersion"] = resource.ApiVersion();
      (*object)["kind"] = resource.kind;
      result.items.push_back(std::move(object));
    }
  }
  return result;
}

StatusOr<ObjectPtr> RestClient::Create(const Resource& resource, const std::string& ns,
                                       const Object& object) {
  const std::string target_ns = ObjectNamespace(object, ns);
  if (resource.namespaced && !IsSafePathSegment(target_ns)) {
    return Status::InvalidArgument("invalid namespace \"" + target_ns.substr(0, 64) + "\"");
  }
  const std::string body = object.dump();
  return DoObject("POST", "POST", resource.CollectionPath(target_ns), &body, "application/json");
}

Status RestClient::CreateOnly(const Resource& resource, const std::string& ns,
                              const Object& object) {
  const std::string target_ns = ObjectNamespace(object, ns);
  if (resource.namespaced && !IsSafePathSegment(target_ns)) {
    return Status::InvalidArgument("invalid namespace \"" + target_ns.substr(0, 64) + "\"");
  }
  const std::string body = object.dump();
  const std::string path = resource.CollectionPath(target_ns);
  auto raw = Do("POST", "POST", path, &body, "application/json");
  if (!raw.ok()) return raw.status();
  if (raw->code < 200 || raw->code >= 300)
    return StatusFromHttp(raw->code, raw->body, "POST " + path);
  return Status::Ok();
}

StatusOr<ObjectPtr> RestClient::Update(const Resource& resource, const std::string& ns,
                                       const Object& object) {
  const std::string target_ns = ObjectNamespace(object, ns);
  const std::string name = Field(object, "metadata", "name");
  EPHEMERA_RETURN_IF_ERROR(CheckNames(target_ns, name, resource));
  const std::string body = object.dump();
  return DoObject("PUT", "PUT", resource.ObjectPath(target_ns, name), &body, "application/json");
}

StatusOr<ObjectPtr> RestClient::UpdateStatus(const Resource& resource, const std::string& ns,
                                             const Object& object) {
  const std::string target_ns = ObjectNamespace(object, ns);
  const std::string name = Field(object, "metadata", "name");
  EPHEMERA_RETURN_IF_ERROR(CheckNames(target_ns, name, resource));
  const std::string body = object.dump();
  return DoObject("PUT", "PUT", resource.ObjectPath(target_ns, name) + "/status", &body,
                  "application/json");
}

StatusOr<ObjectPtr> RestClient::MergePatch(const Resource& resource, const std::string& ns,
                                           const std::string& name, const Object& patch) {
  EPHEMERA_RETURN_IF_ERROR(CheckNames(ns, name, resource));
  const std::string body = patch.dump();
  return DoObject("PATCH", "PATCH", resource.ObjectPath(ns, name), &body,
                  "application/merge-patch+json");
}

StatusOr<ObjectPtr> RestClient::Apply(const Resource& resource, const std::string& ns,
                                      const Object& object, const std::string& field_manager,
                                      bool force) {
  const std::string target_ns = ObjectNamespace(object, ns);
  const std::string name = Field(object, "metadata", "name");
  EPHEMERA_RETURN_IF_ERROR(CheckNames(target_ns, name, resource));
  if (field_manager.empty())
    return Status::InvalidArgument("server-side apply needs a field manager");
  const std::string body = object.dump();  // JSON is YAML.
  const std::string path = resource.ObjectPath(target_ns, name) +
                           Query({{"fieldManager", field_manager}, {"force", force ? "true" : ""}});
  return DoObject("PATCH", "APPLY", path, &body, "application/apply-patch+yaml");
}

Status RestClient::Delete(const Resource& resource, const std::string& ns, const std::string& name,
                          const DeleteOptions& options) {
  EPHEMERA_RETURN_IF_ERROR(CheckNames(ns, name, resource));
  Object body = {{"apiVersion", "v1"}, {"kind", "DeleteOptions"}};
  if (!options.precondition_uid.empty()) body["preconditions"]["uid"] = options.precondition_uid;
  if (!options.precondition_resource_version.empty()) {
    body["preconditions"]["resourceVersion"] = options.precondition_resource_version;
  }
  if (!options.propagation_policy.empty()) body["propagationPolicy"] = options.propagation_policy;
  if (options.grace_period_seconds >= 0) body["gracePeriodSeconds"] = options.grace_period_seconds;
  const std::string text = body.dump();
  const std::string path = resource.ObjectPath(ns, name);
  auto raw = Do("DELETE", "DELETE", path, &text, "application/json");
  if (!raw.ok()) return raw.status();
  if (raw->code < 200 || raw->code >= 300)
    return StatusFromHttp(raw->code, raw->body, "DELETE " + path);
  return Status::Ok();
}

StatusOr<WatchStreamPtr> RestClient::Watch(const Resource& resource, const std::string& ns,
                                           const WatchOptions& options) {
  if (resource.namespaced && !ns.empty() && !IsSafePathSegment(ns)) {
    return Status::InvalidArgument("invalid namespace \"" + ns.substr(0, 64) + "\"");
  }
  const int timeout = std::max(1, options.timeout_seconds);
  const std::string path = resource.CollectionPath(ns) +
                           Query({{"watch", "1"},
                                  {"labelSelector", options.label_selector},
                                  {"fieldSelector", options.field_selector},
                                  {"resourceVersion", options.resource_version},
                                  {"allowWatchBookmarks", options.allow_bookmarks ? "true" : ""},
                                  {"timeoutSeconds", std::to_string(timeout)}});
  const std::string what = "WATCH " + resource.CollectionPath(ns);
  StatusOr<std::unique_ptr<StreamingResponse>> response = Status::Unknown("");
  for (int attempt = 0;; ++attempt) {
    limiter_.Wait();
    std::shared_ptr<const ExecCredential> credential;
    auto authorization = Authorization(&credential);
    if (!authorization.ok()) {
      return Status(authorization.status().code(), what + ": " + authorization.status().message());
    }
    const HttpRequestSpec request{.method = "GET",
                                  .target = path,
                                  .user_agent = config_.user_agent,
                                  .authorization = *authorization};
    const auto start = std::chrono::steady_clock::now();
    // The connection is held for the whole watch, until a little after the server's own timeout.
    response = transport_->Open(request, config_.request_timeout,
                                start + std::chrono::seconds(timeout + 30));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!response.ok()) {
      if (observer_) observer_("WATCH", 0, seconds);
      return Status(response.status().code(), what + ": " + response.status().message());
    }
    if (observer_) observer_("WATCH", (*response)->code(), seconds);
    if ((*response)->code() == 401 && credential != nullptr && attempt == 0) {
      config_.exec->Invalidate(credential);  // as in Do(): a new credential, once
      continue;
    }
    break;
  }
  if ((*response)->code() != 200) {
    std::string body;
    while (body.size() < std::size_t{64} * 1024) {
      auto more = (*response)->ReadSome(&body);
      if (!more.ok() || !*more) break;
    }
    return StatusFromHttp((*response)->code(), body, what);
  }
  return WatchStreamPtr(
      std::make_unique<RestWatchStream>(std::move(*response), what, options.filter));
}

}  // namespace ephemera::apiclient
