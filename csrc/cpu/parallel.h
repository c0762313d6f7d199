// Task sizes for at::parallel_for in the CPU kernels.
#pragma once

#include <algorithm>
#include <cstdint>

namespace davae {

// The grain (items per task) that gives each task at least `min_elements` elements when an item
// has `per_item`: below that, waking a second thread (an OpenMP fork, some microseconds) costs more
// than the work it takes over, and tiny inputs stay on the calling thread.
inline int64_t grain_for(int64_t per_item, int64_t min_elements = int64_t{1} << 15) {
  return std::max<int64_t>(1, min_elements / std::max<int64_t>(per_item, 1));
}

}  // namespace davae
