#include "apiclient/rest_client.h"

#include <cpprest/http_client.h>
#include <pplx/threadpool.h>

#include <array>
#include <boost/asio/ssl.hpp>
#include <chrono>
#include <mutex>
#include <thread>

#include "apiclient/errors.h"
#include "apiclient/field_filter.h"

namespace ephemera::apiclient {
namespace {

using web::http::http_request;
using web::http::http_response;
using web::http::client::http_client;
using web::http::client::http_client_config;

web::http::method MethodFor(std::string_view method) {
  return std::string(method);
}

// Applies the config's trust and identity to an SSL context. Throws on bad PEM data.
void ConfigureTls(const RestConfig& config, boost::asio::ssl::context& ctx) {
  ctx.set_verify_mode(boost::asio::ssl::verify_peer);
  if (config.ca_pem.empty()) {
    ctx.set_default_verify_paths();
  } else {
    ctx.add_certificate_authority(boost::asio::buffer(config.ca_pem));
  }
  if (!config.client_cert_pem.empty()) {
    ctx.use_certificate_chain(boost::asio::buffer(config.client_cert_pem));
    ctx.use_private_key(boost::asio::buffer(config.client_key_pem), boost::asio::ssl::context::pem);
  }
}

http_client_config ClientConfig(const RestConfig& config, std::chrono::seconds timeout) {
  http_client_config cfg;
  cfg.set_validate_certificates(true);
  cfg.set_timeout(timeout);
  cfg.set_ssl_context_callback(
      [config](boost::asio::ssl::context& ctx) { ConfigureTls(config, ctx); });
  return cfg;
}

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
  RestWatchStream(std::unique_ptr<http_client> client, http_response response,
                  pplx::cancellation_token_source cancel, std::string what,
                  const std::shared_ptr<const FieldFilter>& filter)
      : envelope_filter_(filter == nullptr ? nullptr
                                           : std::make_unique<FieldFilter>(FieldFilter{
                                                 {"type", FieldFilter()}, {"object", *filter}})),
        client_(std::move(client)),
        response_(std::move(response)),
        body_(response_.body()),
        cancel_(std::move(cancel)),
        what_(std::move(what)) {}

  ~RestWatchStream() override {
    Stop();
    // The body must be drained or closed before the client goes; closing is enough.
    try {
      body_.close().wait();
    } catch (...) {  // NOLINT(bugprone-empty-catch): nothing more to do while closing
    }
  }

  bool Next(WatchEvent* event, Status* error) override {
    while (true) {
      if (stopped_.load()) {
        *error = Status::Cancelled(what_ + ": stopped");
        return false;
      }
      std::string text;
      bool eof = false;
      try {
        eof = !ReadLine(&text);
      } catch (const std::exception& e) {
        *error = stopped_.load() ? Status::Cancelled(what_ + ": stopped")
                                 : Status::Unavailable(what_ + ": " + e.what());
        return false;
      }
      if (stopped_.load()) {  // Stop() during the read: deliver nothing more.
        *error = Status::Cancelled(what_ + ": stopped");
        return false;
      }
      if (eof) {
        *error = Status::Ok();
        return false;
      }
      if (text.empty()) continue;  // An empty line between events.
      auto parsed = ParseFiltered(text, envelope_filter_.get());
      if (!parsed.is_object()) {
        *error = Status::Internal(what_ + ": a watch event is not JSON");
        return false;
      }
      const std::string type = parsed.value("type", "");
      if (type == "ERROR" && envelope_filter_ != nullptr) {
        parsed = Object::parse(text, nullptr, /*allow_exceptions=*/false);  // a Status: read it all
        if (!parsed.is_object()) {
          *error = Status::Internal(what_ + ": a watch event is not JSON");
          return false;
        }
      }
      auto object = parsed.find("object");
      if (object == parsed.end() || !object->is_object()) {
        *error = Status::Internal(what_ + ": a watch event has no object");
        return false;
      }
      if (type == "ERROR") {
        const int code = object->value("code", 500);
        *error = StatusFromHttp(code, object->dump(), what_);
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
        *error =
            Status::Internal(what_ + ": unknown watch event type \"" + type.substr(0, 32) + "\"");
        return false;
      }
      event->object = std::make_shared<Object>(std::move(*object));
      return true;
    }
  }

  void Stop() override {
    if (!stopped_.exchange(true)) cancel_.cancel();
    std::lock_guard<std::mutex> lock(close_mu_);
    if (!closed_) {
      closed_ = true;
      try {
        body_.close().wait();
      } catch (...) {  // NOLINT(bugprone-empty-catch): a failed close is still closed
      }
    }
  }

 private:
  // Reads the next line (without its newline) into *line; false at the end of the stream. Takes
  // whatever the connection has delivered in one piece and splits lines here: reading a byte at a
  // time through the stream buffer takes its lock once per byte.
  bool ReadLine(std::string* line) {
    auto buf = body_.streambuf();
    size_t scanned = 0;
    while (true) {
      const size_t newline = pending_.find('\n', scanned);
      if (newline != std::string::npos) {
        line->assign(pending_, 0, newline);
        pending_.erase(0, newline + 1);
        return true;
      }
      scanned = pending_.size();
      if (scanned > kMaxLine) throw std::length_error("a watch event is longer than 64 MiB");
      const size_t available = buf.in_avail();
      if (available > 0) {
        const size_t n = std::min(available, chunk_.size());
        const size_t got = buf.getn(chunk_.data(), n).get();
        pending_.append(reinterpret_cast<const char*>(chunk_.data()), got);
        continue;
      }
      // Nothing buffered: wait for the next byte (or the end of the stream).
      const auto c = buf.bumpc().get();
      if (c == decltype(buf)::traits::eof()) {
        if (pending_.empty()) return false;
        line->swap(pending_);
        pending_.clear();
        return true;
      }
      pending_.push_back(static_cast<char>(c));
    }
  }

  const std::unique_ptr<const FieldFilter> envelope_filter_;  // {type, object: the caller's}
  std::unique_ptr<http_client> client_;
  http_response response_;
  concurrency::streams::istream body_;
  pplx::cancellation_token_source cancel_;
  const std::string what_;
  std::atomic<bool> stopped_{false};
  std::mutex close_mu_;
  bool closed_ = false;
  static constexpr size_t kMaxLine = 64 << 20;
  std::string pending_;  // read from the stream, not yet returned as a line
  std::array<uint8_t, 64 * 1024> chunk_{};
};

}  // namespace

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
  // cpprestsdk's pool defaults to 40 threads, and every request then hops between them (context
  // switches cost more CPU than the JSON work). The first client of the process sizes it.
  static std::once_flag pool_once;
  std::call_once(pool_once, [threads = config.io_threads] {
    try {
      crossplat::threadpool::initialize_with_threads(static_cast<size_t>(std::max(1, threads)));
    } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch): already sized: keep it
    }
  });
  if (config.server.rfind("https://", 0) != 0) {
    return Status::InvalidArgument("the API server URL must be https://, not \"" +
                                   config.server.substr(0, 100) + "\"");
  }
  if (!config.tls_server_name.empty()) {
    return Status::Unimplemented(
        "tls-server-name is not supported: the server certificate must be valid for the host of "
        "the server URL");
  }
  try {
    boost::asio::ssl::context probe(boost::asio::ssl::context::tls_client);
    ConfigureTls(config, probe);
  } catch (const std::exception& e) {
    return Status::InvalidArgument(
        std::string("cannot load the TLS CA, client certificate or key: ") + e.what());
  }
  return std::shared_ptr<RestClient>(new RestClient(std::move(config), std::move(observer)));
}

RestClient::RestClient(RestConfig config, RequestObserver observer)
    : config_(std::move(config)),
      observer_(std::move(observer)),
      limiter_(config_.qps, config_.burst),
      client_(std::make_unique<http_client>(config_.server,
                                            ClientConfig(config_, config_.request_timeout))) {}

RestClient::~RestClient() = default;

Status RestClient::AddAuth(void* request_ptr) const {
  auto& request = *static_cast<http_request*>(request_ptr);
  request.headers().add("User-Agent", config_.user_agent);
  request.headers().add("Accept", "application/json");
  auto token = config_.CurrentToken();
  if (!token.ok()) return token.status();
  if (!token->empty()) request.headers().add("Authorization", "Bearer " + *token);
  return Status::Ok();
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
  while (true) {
    limiter_.Wait();
    http_request request(MethodFor(method));
    request.set_request_uri(path);
    EPHEMERA_RETURN_IF_ERROR(AddAuth(&request));
    if (body != nullptr) request.set_body(*body, std::string(content_type));
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&start] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    RawResponse raw;
    std::string retry_after;
    try {
      http_response response = client_->request(request).get();
      raw.code = response.status_code();
      raw.body = response.extract_utf8string(true).get();
      if (response.headers().has("Retry-After")) retry_after = response.headers()["Retry-After"];
    } catch (const std::exception& e) {
      if (observer_) observer_(verb, 0, elapsed());
      if (idempotent && transport_retries < kMaxTransportRetries) {
        std::this_thread::sleep_for(transport_backoff.Delay(transport_retries++));
        continue;
      }
      return Status::Unavailable(what + ": " + e.what());
    }
    if (observer_) observer_(verb, raw.code, elapsed());
    const bool throttled = raw.code == 429 || (raw.code >= 500 && !retry_after.empty());
    if (throttled && throttle_retries < kMaxThrottleRetries) {
      int seconds = 1;
      try {
        seconds = std::stoi(retry_after);
      } catch (...) {  // NOLINT(bugprone-empty-catch): a date or garbage: wait one second
      }
      seconds = std::clamp(seconds, 1, 10);
      ++throttle_retries;
      std::this_thread::sleep_for(std::chrono::seconds(seconds));
      continue;
    }
    return raw;
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
  // A client of its own: its connection is held for the whole watch, with a timeout longer than
  // the server's.
  auto client = std::make_unique<http_client>(
      config_.server, ClientConfig(config_, std::chrono::seconds(timeout + 30)));
  limiter_.Wait();
  http_request request(web::http::methods::GET);
  request.set_request_uri(path);
  EPHEMERA_RETURN_IF_ERROR(AddAuth(&request));
  pplx::cancellation_token_source cancel;
  const auto start = std::chrono::steady_clock::now();
  http_response response;
  try {
    response = client->request(request, cancel.get_token()).get();
  } catch (const std::exception& e) {
    if (observer_) observer_("WATCH", 0, 0);
    return Status::Unavailable(what + ": " + e.what());
  }
  if (observer_) {
    observer_("WATCH", response.status_code(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  if (response.status_code() != 200) {
    std::string body;
    try {
      body = response.extract_utf8string(true).get();
    } catch (...) {  // NOLINT(bugprone-empty-catch): the status code alone is enough
    }
    return StatusFromHttp(response.status_code(), body, what);
  }
  return WatchStreamPtr(std::make_unique<RestWatchStream>(std::move(client), std::move(response),
                                                          cancel, what, options.filter));
}

}  // namespace ephemera::apiclient
