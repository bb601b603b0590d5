# What a distribution package adds to `cmake --install`: bash completion, the copyright and
# changelog, and the Debian package itself, made by CPack from exactly what `cmake --install`
# installs: `cmake --build build --target package` leaves build/loopdio_VERSION_ARCH.deb.
# packaging/README.md says why CPack, and how the package meets the nbdkit it needs.
set(pkg_src ${CMAKE_SOURCE_DIR}/packaging)
set(pkg_out ${CMAKE_BINARY_DIR}/packaging)

install(FILES ${pkg_src}/bash-completion/loopdio DESTINATION share/bash-completion/completions)

# The changelog, gzipped as Debian keeps it (-n: no name or time stamp, reproducible).
configure_file(${pkg_src}/debian/changelog ${pkg_out}/changelog COPYONLY)
add_custom_command(OUTPUT ${pkg_out}/changelog.gz
  COMMAND gzip -9nkf ${pkg_out}/changelog
  DEPENDS ${pkg_out}/changelog
  VERBATIM)
add_custom_target(loopdio_changelog ALL DEPENDS ${pkg_out}/changelog.gz)
install(FILES ${pkg_out}/changelog.gz ${pkg_src}/debian/copyright DESTINATION share/doc/loopdio)

# The nbdkit the plugin is for: the installation of nbdkit.pc (its prefix's sbin/nbdkit, its
# plugindir), which the plugin, the command and the systemd unit are all built for. A
# distribution's nbdkit is a versioned dependency; one built from source (Debian 12 has no
# nbdkit >= 1.34) is checked by the package's preinst instead, which dpkg cannot do.
set(NBDKIT_MIN 1.34)  # as the top-level pkg_check_modules(nbdkit>=1.34)
pkg_get_variable(pkg_nbdkit_prefix nbdkit prefix)
set(NBDKIT_BIN ${pkg_nbdkit_prefix}/sbin/nbdkit)
execute_process(COMMAND dpkg-query --search ${NBDKIT_BIN}
                OUTPUT_VARIABLE pkg_nbdkit_owner ERROR_QUIET RESULT_VARIABLE pkg_rc)
set(pkg_control_extra ${pkg_src}/debian/postinst ${pkg_src}/debian/postrm)
if(pkg_rc EQUAL 0 AND pkg_nbdkit_owner MATCHES "^([^:, ]+)[^:]*:")
  set(CPACK_DEBIAN_PACKAGE_DEPENDS "${CMAKE_MATCH_1} (>= ${NBDKIT_MIN})")
else()
  configure_file(${pkg_src}/debian/preinst.in ${pkg_out}/preinst @ONLY)
  list(APPEND pkg_control_extra ${pkg_out}/preinst)
endif()
# Lintian's overrides, each with its reason; those of /usr/local only when the plugin is there.
string(REGEX REPLACE "^/" "" PKG_PLUGIN ${NBDKIT_PLUGINDIR}/nbdkit-loopdio-plugin.so)
file(READ ${pkg_src}/debian/lintian-overrides.in pkg_overrides)
if(NBDKIT_PLUGINDIR MATCHES "^/usr/local/")
  file(READ ${pkg_src}/debian/lintian-overrides-usr-local.in pkg_more)
  string(APPEND pkg_overrides "${pkg_more}")
endif()
file(CONFIGURE OUTPUT ${pkg_out}/lintian-overrides CONTENT "${pkg_overrides}" @ONLY)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
             ${pkg_src}/debian/lintian-overrides.in ${pkg_src}/debian/lintian-overrides-usr-local.in)
install(FILES ${pkg_out}/lintian-overrides DESTINATION share/lintian/overrides RENAME loopdio)

# The Maintainer is the signer of the changelog's latest entry.
file(STRINGS ${pkg_src}/debian/changelog pkg_signer LIMIT_COUNT 1 REGEX "^ -- ")
string(REGEX REPLACE "^ -- (.*>)  .*$" "\\1" pkg_maintainer "${pkg_signer}")

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME loopdio)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${pkg_maintainer}")
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "nbdkit plugin serving disk images with O_DIRECT and kernel AIO")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "\
loopdio serves a disk image (a regular file or a block device) over NBD with
nbdkit, reading and writing it with O_DIRECT and asynchronous kernel I/O
(libaio or io_uring): the image is never cached twice, and the server's memory
stays flat however much is read. Unaligned requests are served through aligned
bounce buffers with read-modify-write under byte-range locks.
.
This package holds the nbdkit plugin (nbdkit loopdio file=IMAGE), the loopdio
command (losetup for NBD: serve, attach, detach, list, set, info), systemd
units serving one export per instance under socket activation, man pages and
bash completion.")
# The libraries' packages, from the ELF files (dpkg-shlibdeps), after the nbdkit above.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# loopdio attach connects the kernel's NBD client with nbd-client.
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS nbd-client)
set(CPACK_DEBIAN_PACKAGE_SUGGESTS libnbd-bin)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${pkg_control_extra})  # and conffiles, made when staged
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS
    OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
# After the files are staged, before they are packed: stripping, conffiles, the changelog's
# check (CPack hands its scripts only CPACK_ variables).
set(CPACK_PRE_BUILD_SCRIPTS ${CMAKE_CURRENT_LIST_DIR}/PackagingStage.cmake)
set(CPACK_LOOPDIO_STRIP ${CMAKE_STRIP})
set(CPACK_LOOPDIO_CHANGELOG ${pkg_src}/debian/changelog)
# `package_source` would otherwise pack build trees and .git.
set(CPACK_SOURCE_GENERATOR TXZ)
set(CPACK_SOURCE_IGNORE_FILES "/\\\\.git" "/build[^/]*/")
include(CPack)
