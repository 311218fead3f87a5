#include "apiclient/field_filter.h"

#include <utility>

namespace ephemera::apiclient {

FieldFilter::FieldFilter(std::initializer_list<std::pair<std::string, FieldFilter>> members)
    : keep_all_(false), members_(members) {}

FieldFilter::FieldFilter(std::vector<std::pair<std::string, FieldFilter>> members)
    : keep_all_(false), members_(std::move(members)) {}

const FieldFilter* FieldFilter::Member(std::string_view name) const {
  if (keep_all_) return this;
  for (const auto& [member, node] : members_) {
    if (member == name) return &node;
  }
  return nullptr;
}

namespace {

// Follows the parser through the document. nlohmann's callback parser reports the nesting depth
// with every event (also inside values it already drops, where it builds nothing), so one node per
// depth is enough: the node of the container open at that depth, and the node chosen by its last
// key. A nullptr node means "dropped".
class FilterState {
 public:
  explicit FilterState(const FieldFilter* root) : root_(root) {}

  bool operator()(int depth, nlohmann::detail::parse_event_t event, Object& parsed) {
    using nlohmann::detail::parse_event_t;
    const auto d = static_cast<size_t>(depth);
    switch (event) {
      case parse_event_t::object_start:
      case parse_event_t::array_start: {
        const FieldFilter* node = d == 0 ? root_ : NodeOfValueAt(d);
        if (levels_.size() < d + 2) levels_.resize(d + 2);
        levels_[d + 1] = {node, event == parse_event_t::array_start, nullptr};
        return node != nullptr;
      }
      case parse_event_t::key: {
        if (d >= levels_.size()) return true;
        Level& level = levels_[d];
        level.next = level.node == nullptr
                         ? nullptr
                         : level.node->Member(parsed.get_ref<const std::string&>());
        return level.next != nullptr;
      }
      case parse_event_t::value:
      case parse_event_t::object_end:
      case parse_event_t::array_end:
        return true;
    }
    return true;
  }

 private:
  struct Level {
    const FieldFilter* node = nullptr;  // of the container open at this depth
    bool is_array = false;
    const FieldFilter* next = nullptr;  // of the value after the last key
  };

  const FieldFilter* NodeOfValueAt(size_t d) const {
    if (d >= levels_.size()) return nullptr;
    const Level& level = levels_[d];
    return level.is_array ? level.node : level.next;
  }

  const FieldFilter* const root_;
  std::vector<Level> levels_;
};

}  // namespace

Object ParseFiltered(std::string_view text, const FieldFilter* filter) {
  if (filter == nullptr || filter->keeps_all()) {
    return Object::parse(text, nullptr, /*allow_exceptions=*/false);
  }
  FilterState state(filter);
  return Object::parse(
      text,
      [&state](int depth, nlohmann::detail::parse_event_t event, Object& parsed) {
        return state(depth, event, parsed);
      },
      /*allow_exceptions=*/false);
}

}  // namespace ephemera::apiclient
