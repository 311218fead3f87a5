// FieldFilter: which members of a JSON document to keep while it is decoded.
//
// An informer that trims every object (InformerOptions::transform) throws most of a Pod away right
// after decoding it. With a filter the decoder never builds the members the transform would drop:
// on a watch of pods that is most of the decoding work and nearly all of its allocations. The
// filter is coarse (whole members); the transform stays the exact rule.
//
// A node keeps a value whole, or keeps only the named members of an object, each with a node of
// its own. An array applies its node to every element. A member not named is dropped.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apiclient/client.h"

namespace ephemera::apiclient {

class FieldFilter {
 public:
  // Keeps the whole value.
  FieldFilter() = default;
  // Keeps only these members (of an object, or of each object in an array).
  FieldFilter(std::initializer_list<std::pair<std::string, FieldFilter>> members);
  explicit FieldFilter(std::vector<std::pair<std::string, FieldFilter>> members);

  bool keeps_all() const { return keep_all_; }
  // The node for a member; nullptr when the member is dropped.
  const FieldFilter* Member(std::string_view name) const;

 private:
  bool keep_all_ = true;
  std::vector<std::pair<std::string, FieldFilter>> members_;
};

// Parses `text` as JSON, keeping only what `filter` keeps (everything when filter is nullptr).
// The result is discarded (is_discarded()) when the text is not valid JSON.
Object ParseFiltered(std::string_view text, const FieldFilter* filter);

}  // namespace ephemera::apiclient
