# Cross build for 64-bit ARM Linux (AArch64) with Debian's cross compiler:
#   apt-get install g++-aarch64-linux-gnu            (tools/install_deps.sh does this)
#   cmake -S . -B build-aarch64 -G Ninja -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
#   cmake --build build-aarch64
# The result runs on a board or under qemu-aarch64-static (docs/arm.md).
#
# Libraries for the target come from two places: the cross toolchain's own sysroot
# (libc, libstdc++) and Debian's multiarch packages (zlib1g-dev:arm64), which
# install into <prefix>/lib/aarch64-linux-gnu. Header-only dependencies (doctest,
# nlohmann-json, CLI11, stb) are architecture independent and found in the host's include
# directories; the cross compiler searches those too.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(ISPLIT_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${ISPLIT_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${ISPLIT_CROSS_TRIPLE}-g++)
set(CMAKE_AR ${ISPLIT_CROSS_TRIPLE}-ar CACHE FILEPATH "Archiver")
set(CMAKE_RANLIB ${ISPLIT_CROSS_TRIPLE}-ranlib CACHE FILEPATH "Ranlib")
set(CMAKE_STRIP ${ISPLIT_CROSS_TRIPLE}-strip CACHE FILEPATH "Strip")

# Multiarch: find_library() and find_package() look in <prefix>/lib/aarch64-linux-gnu and
# never in the host's <prefix>/lib/x86_64-linux-gnu, so host-only libraries (for example
# Google Benchmark) are simply not found and their targets are skipped.
set(CMAKE_LIBRARY_ARCHITECTURE ${ISPLIT_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH /usr/${ISPLIT_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# Fully static executables by default: one file to copy to a board. Pass -DISPLIT_STATIC=OFF for a dynamically linked build.
set(ISPLIT_STATIC ON CACHE BOOL "Link executables fully static")

# Lets CMake (try_run, ctest) run target programs on the build machine.
find_program(ISPLIT_QEMU_AARCH64 qemu-aarch64-static)
if(ISPLIT_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${ISPLIT_QEMU_AARCH64})
endif()
