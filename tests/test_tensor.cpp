// Tensor basics: shapes, views, errors, alignment, the freed-block cache and huge pages.
#include <doctest/doctest.h>

#include <cstdint>
#include <fstream>

#include "engine/tensor.h"

using namespace isplit;

TEST_SUITE("tensor") {
  TEST_CASE("shapes, views and copies") {
    Tensor t = Tensor::from({2, 3}, {1, 2, 3, 4, 5, 6});
    CHECK(t.numel() == 6);
    CHECK(t.dim(-1) == 3);
    CHECK(reinterpret_cast<uintptr_t>(t.data()) % 64 == 0);
    Tensor v = t.reshape({3, 2});
    CHECK(v.shares_storage(t));
    v[0] = 9;
    CHECK(t[0] == 9);
    Tensor row = t.slice0(1, 2);
    CHECK(row.shape() == Shape{1, 3});
    CHECK(row[0] == 4);
    Tensor c = t.clone();
    c[1] = -1;
    CHECK(t[1] == 2);
    CHECK(Tensor::full({}, 2.5f)[0] == 2.5f);
    CHECK(Tensor::zeros({0, 4}).numel() == 0);
    CHECK(shape_str({2, 3, 4}) == "2x3x4");
  }

  TEST_CASE("bad shapes are errors, not crashes") {
    Tensor t = Tensor::zeros({2, 3});
    CHECK_THROWS_AS(t.reshape({4, 2}), Error);
    CHECK_THROWS_AS(t.slice0(1, 3), Error);
    CHECK_THROWS_AS(t.dim(2), Error);
    CHECK_THROWS_AS(Tensor::zeros({-1, 2}), Error);
    CHECK_THROWS_AS(Tensor::zeros({int64_t{1} << 40, int64_t{1} << 40}), Error);
    CHECK_THROWS_AS(Tensor::from({2}, {1, 2, 3}), Error);
    CHECK_THROWS_AS(check_shape(t, {3, 2}, "weight"), Error);
  }

  TEST_CASE("freed storage is reused, within the cache limit") {
    const Shape big{1 << 18};  // 1 MiB: above the cache's small-block threshold
    float* first;
    {
      Tensor a = Tensor::empty(big);
      first = a.data();
    }
    CHECK(tensor_cache_bytes() >= size_t{1} << 20);
    Tensor b = Tensor::empty(big);
    CHECK(b.data() == first);
    Tensor z = Tensor::zeros(big);  // reused blocks are still zeroed when asked
    for (int64_t i = 0; i < z.numel(); i += 4097) REQUIRE(z[i] == 0.0f);
    set_tensor_cache_limit(0);
    CHECK(tensor_cache_bytes() == 0);
    { Tensor d = Tensor::empty(big); }
    CHECK(tensor_cache_bytes() == 0);
    set_tensor_cache_limit(size_t{2} << 30);
  }

  TEST_CASE("inside a HugePageScope, blocks of 2 MiB or more start on a huge page and are advised") {
    const bool was = tensor_huge_pages();
    // The kernel takes the advice wherever it has transparent huge pages at all.
    const bool thp = std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good();
    const size_t mib = size_t{1} << 20;
    // Sizes no other test asks for, so the blocks are fresh rather than from the cache.
    set_tensor_huge_pages(true);
    size_t before = tensor_huge_page_bytes();
    {
      Tensor outside = Tensor::zeros({int64_t(5 * mib / 4 + 48)});  // no scope: small pages
      CHECK(tensor_huge_page_bytes() == before);
      HugePageScope huge;
      Tensor t = Tensor::zeros({int64_t(5 * mib / 4 + 16)});  // 5 MiB and 64 bytes
      CHECK(reinterpret_cast<uintptr_t>(t.data()) % (2 * mib) == 0);
      CHECK(tensor_huge_page_bytes() - before == (thp ? 4 * mib : 0));  // whole pages only
      Tensor small = Tensor::zeros({int64_t(mib / 4)});  // 1 MiB: left to small pages
      CHECK(tensor_huge_page_bytes() - before == (thp ? 4 * mib : 0));
    }
    {
      Tensor after = Tensor::zeros({int64_t(5 * mib / 4 + 64)});  // the scope has ended
      CHECK(tensor_huge_page_bytes() - before == (thp ? 4 * mib : 0));
    }
    set_tensor_huge_pages(false);  // ISPLIT_HUGEPAGES=0: scopes change nothing
    before = tensor_huge_page_bytes();
    {
      HugePageScope huge;
      Tensor t = Tensor::zeros({int64_t(5 * mib / 4 + 32)});
      CHECK(tensor_huge_page_bytes() == before);
      t[t.numel() - 1] = 1.0f;
      CHECK(t[t.numel() - 1] == 1.0f);
    }
    set_tensor_huge_pages(was);
  }
}
