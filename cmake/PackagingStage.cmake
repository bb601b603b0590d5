# Run by CPack on the staged files, before the package is made: strips the ELF files as
# dh_strip does, lists what lands in /etc as conffiles (dpkg keeps an administrator's edits
# of them), and refuses to make a package whose version is not the changelog's latest entry.
file(STRINGS ${CPACK_LOOPDIO_CHANGELOG} latest LIMIT_COUNT 1 REGEX "^[a-z0-9]")
string(REGEX MATCH "^([^ ]+) \\(([^)]+)\\)" _ "${latest}")
if(NOT CMAKE_MATCH_1 STREQUAL CPACK_PACKAGE_NAME
   OR NOT CMAKE_MATCH_2 STREQUAL CPACK_PACKAGE_VERSION)
  message(FATAL_ERROR "packaging/debian/changelog's latest entry is ${CMAKE_MATCH_1} "
                      "${CMAKE_MATCH_2}, but the package is ${CPACK_PACKAGE_NAME} "
                      "${CPACK_PACKAGE_VERSION}: add an entry for it (dch -v ${CPACK_PACKAGE_VERSION})")
endif()
set(stage ${CPACK_TEMPORARY_DIRECTORY})

# Every ELF file, whichever install() put it there (CPACK_STRIP_FILES strips only targets,
# and the plugin is installed as a file under nbdkit's name for it).
file(GLOB_RECURSE files LIST_DIRECTORIES false ${stage}/*)
foreach(f ${files})
  if(IS_SYMLINK ${f})
    continue()
  endif()
  file(READ ${f} magic LIMIT 4 HEX)
  if(magic STREQUAL "7f454c46")
    execute_process(COMMAND ${CPACK_LOOPDIO_STRIP} --remove-section=.comment
                            --remove-section=.note --strip-unneeded ${f}
                    COMMAND_ERROR_IS_FATAL ANY)
  endif()
endforeach()

file(GLOB_RECURSE etc LIST_DIRECTORIES false RELATIVE ${stage} ${stage}/etc/*)
list(SORT etc)
list(TRANSFORM etc PREPEND /)
list(JOIN etc "\n" conffiles)
# Next to the staged files, so that packaging writes nothing into the build tree.
file(WRITE ${CPACK_TOPLEVEL_DIRECTORY}/conffiles "${conffiles}\n")
list(APPEND CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${CPACK_TOPLEVEL_DIRECTORY}/conffiles)
