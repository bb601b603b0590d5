# Where the nbdkit the plugin is built against came from, for `loopdio --version` and the
# plugin's --dump-plugin: NBDKIT_ORIGIN, e.g. "Debian 1.42.3-1 source with its 9 patches,
# /usr/local". Read at configure time, from the stamp scripts/nbdkit.sh installs next to its
# build, else from the Debian package that owns nbdkit.pc: it describes the headers the
# binaries were compiled with, which is what "built against" means.
pkg_get_variable(_nbdkit_prefix nbdkit prefix)
pkg_get_variable(_nbdkit_pcdir nbdkit pcfiledir)
set(_stamp ${_nbdkit_prefix}/share/loopdio/nbdkit-origin)
set(_origin "")

if(EXISTS ${_stamp})
  # nbdkit rebuilt or replaced: configure again.
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_stamp})
  file(STRINGS ${_stamp} _origin REGEX "^origin=" LIMIT_COUNT 1)
  file(STRINGS ${_stamp} _stamp_version REGEX "^version=" LIMIT_COUNT 1)
  string(REGEX REPLACE "^origin=" "" _origin "${_origin}")
  string(REGEX REPLACE "^version=" "" _stamp_version "${_stamp_version}")
  if(NOT _stamp_version STREQUAL NBDKIT_VERSION)
    # Another nbdkit was installed over the stamped one.
    set(_origin "origin unknown: ${_stamp} names ${_stamp_version}")
  endif()
endif()
if(EXISTS ${_nbdkit_pcdir}/nbdkit.pc)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_nbdkit_pcdir}/nbdkit.pc)
endif()

if(NOT _origin)
  execute_process(COMMAND dpkg-query -S ${_nbdkit_pcdir}/nbdkit.pc
                  OUTPUT_VARIABLE _owner RESULT_VARIABLE _rc
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_rc EQUAL 0 AND _owner MATCHES "^([^:, ]+):")
    set(_package ${CMAKE_MATCH_1})
    execute_process(COMMAND dpkg-query -W -f=\${Version} ${_package}
                    OUTPUT_VARIABLE _package_version OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    set(_origin "Debian package ${_package} ${_package_version}")
  else()
    set(_origin "origin unknown: no package and no stamp of scripts/nbdkit.sh")
  endif()
endif()

# It ends up in a C string literal: only plain characters.
string(REGEX REPLACE "[^-A-Za-z0-9 .,:;+~()/_]" "" _origin "${_origin}")
set(NBDKIT_ORIGIN "${_origin}, ${_nbdkit_prefix}")
message(STATUS "nbdkit ${NBDKIT_VERSION} (${NBDKIT_ORIGIN})")
