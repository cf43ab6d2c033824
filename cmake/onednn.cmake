# The optional oneDNN inference backend (`--backend onednn`, models/onednn/): a reference
# for x86 servers, never part of a device build.
#
#   ISPLIT_ONEDNN=AUTO  (default) on when building natively for x86-64 and Debian's
#                       libdnnl-dev (oneDNN 2.x, OpenMP runtime) is found
#   ISPLIT_ONEDNN=ON    the same, but a missing oneDNN is a configure error
#   ISPLIT_ONEDNN=OFF   never
#
# Sets ISPLIT_HAVE_ONEDNN (ON/OFF) and, when on, defines the static library isplit_onednn,
# which carries the compile definition ISPLIT_HAVE_ONEDNN=1 to whatever links it. Only the
# `isplit` program and the tests link it: the engine, models and the C API never do.

set(ISPLIT_ONEDNN AUTO CACHE STRING "oneDNN inference backend: AUTO, ON or OFF")
set_property(CACHE ISPLIT_ONEDNN PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${ISPLIT_ONEDNN}" _onednn_mode)
if(_onednn_mode MATCHES "^(ON|YES|TRUE|1)$")
  set(_onednn_mode ON)
elseif(_onednn_mode MATCHES "^(OFF|NO|FALSE|0)$")
  set(_onednn_mode OFF)
elseif(NOT _onednn_mode STREQUAL "AUTO")
  message(FATAL_ERROR "ISPLIT_ONEDNN must be AUTO, ON or OFF (got '${ISPLIT_ONEDNN}')")
endif()

set(ISPLIT_HAVE_ONEDNN OFF)
set(_onednn_why "")
if(_onednn_mode STREQUAL "OFF")
  set(_onednn_why "ISPLIT_ONEDNN=OFF")
elseif(CMAKE_CROSSCOMPILING OR NOT ISPLIT_ARCH STREQUAL "x86_64")
  set(_onednn_why "only for native x86-64 builds (target ${ISPLIT_ARCH})")
elseif(ISPLIT_HEAD_ONLY OR NOT (ISPLIT_BUILD_APPS OR ISPLIT_BUILD_TESTS))
  set(_onednn_why "nothing in this build links it (no program, no tests)")
else()
  find_path(DNNL_INCLUDE_DIR dnnl.hpp PATH_SUFFIXES oneapi/dnnl)
  find_library(DNNL_LIBRARY dnnl)
  find_package(OpenMP COMPONENTS CXX QUIET)
  set(_dnnl_version_h "")
  foreach(_h "${DNNL_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h" "${DNNL_INCLUDE_DIR}/dnnl_version.h")
    if(DNNL_INCLUDE_DIR AND EXISTS "${_h}" AND NOT _dnnl_version_h)
      set(_dnnl_version_h "${_h}")
    endif()
  endforeach()
  set(_dnnl_major "")
  if(_dnnl_version_h)
    file(STRINGS "${_dnnl_version_h}" _line REGEX "#define DNNL_VERSION_MAJOR [0-9]+")
    string(REGEX REPLACE ".*DNNL_VERSION_MAJOR ([0-9]+).*" "\\1" _dnnl_major "${_line}")
  endif()
  if(NOT DNNL_INCLUDE_DIR OR NOT DNNL_LIBRARY)
    set(_onednn_why "dnnl.hpp or libdnnl not found (install libdnnl-dev)")
  elseif(NOT _dnnl_major STREQUAL "2")
    set(_onednn_why "oneDNN major version '${_dnnl_major}' found; the backend uses the 2.x API")
  elseif(NOT OpenMP_CXX_FOUND)
    set(_onednn_why "OpenMP (which Debian's libdnnl runs on) not found")
  else()
    set(ISPLIT_HAVE_ONEDNN ON)
  endif()
endif()

if(ISPLIT_HAVE_ONEDNN)
  message(STATUS "isplit: oneDNN backend on (${DNNL_LIBRARY})")
  add_library(isplit_onednn STATIC models/onednn/onednn_net.cpp)
  target_include_directories(isplit_onednn PRIVATE ${DNNL_INCLUDE_DIR})
  target_link_libraries(isplit_onednn PUBLIC isplit_models PRIVATE ${DNNL_LIBRARY} OpenMP::OpenMP_CXX)
  target_compile_definitions(isplit_onednn PUBLIC ISPLIT_HAVE_ONEDNN=1)
elseif(_onednn_mode STREQUAL "ON")
  message(FATAL_ERROR "ISPLIT_ONEDNN=ON but the oneDNN backend cannot be built: ${_onednn_why}")
else()
  message(STATUS "isplit: oneDNN backend off: ${_onednn_why}")
endif()
