# The man pages, made at build time from the Markdown manuals by pandoc (with man-page.lua),
# so that the two cannot drift apart: docs/loopdio.md is nbdkit-loopdio-plugin(1) and
# docs/cli.md the loopdio command's page. A page's name and section are those of its
# document's first heading, "# NAME(SECTION)"; build/man/ holds them, gzipped for share/man.
find_program(LOOPDIO_PANDOC pandoc)
if(NOT LOOPDIO_PANDOC)
  message(FATAL_ERROR "pandoc makes the man pages from docs/*.md: apt-get install pandoc "
                      "(scripts/deps.sh installs it)")
endif()

# A function, so that none of its variables leaks into the including directory.
function(loopdio_man_pages)
  set(dir ${CMAKE_BINARY_DIR}/man)
  set(filter ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/man-page.lua)
  set(refs_file ${dir}/manrefs.yaml)
  set(refs "# The page each manual becomes: a link to it is shown as NAME(SECTION).\nmanrefs:\n")
  set(outputs)
  foreach(md ${ARGN})
    # The first heading is read at configure time, to name the page; an edit of the
    # document re-runs the configure step, so a page renamed there is renamed here too.
    set(src ${CMAKE_SOURCE_DIR}/${md})
    set_property(DIRECTORY ${CMAKE_SOURCE_DIR} APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${src})
    file(STRINGS ${src} title LIMIT_COUNT 1 REGEX "^# ")
    if(NOT title MATCHES "^# ([A-Za-z0-9._-]+)\\(([1-9])([a-z]*)\\)")
      message(FATAL_ERROR "${md}: the first heading must be '# NAME(SECTION)', optionally "
                          "followed by ': WHAT IT IS'; it is '${title}'")
    endif()
    set(page ${CMAKE_MATCH_1}.${CMAKE_MATCH_2}${CMAKE_MATCH_3})
    set(section ${CMAKE_MATCH_2})
    get_filename_component(md_name ${md} NAME)
    string(APPEND refs "  ${md_name}: ${CMAKE_MATCH_1}(${CMAKE_MATCH_2}${CMAKE_MATCH_3})\n")

    # gzip -n: no name or time stamp in the file, so that builds are reproducible.
    add_custom_command(OUTPUT ${dir}/${page} ${dir}/${page}.gz
      COMMAND ${LOOPDIO_PANDOC} --standalone --from=markdown --to=man
              --lua-filter=${filter} --metadata-file=${refs_file}
              --variable=adjusting:l --metadata=header:loopdio
              "--metadata=footer:loopdio ${PROJECT_VERSION}"
              --output=${dir}/${page} ${src}
      COMMAND gzip -9nkf ${dir}/${page}
      DEPENDS ${src} ${filter} ${refs_file}
      COMMENT "Generating man page ${page} from ${md}"
      VERBATIM)
    list(APPEND outputs ${dir}/${page}.gz)
    install(FILES ${dir}/${page}.gz DESTINATION share/man/man${section})
  endforeach()
  file(CONFIGURE OUTPUT ${refs_file} CONTENT "${refs}")
  add_custom_target(loopdio_man_pages ALL DEPENDS ${outputs})
endfunction()

loopdio_man_pages(docs/loopdio.md docs/cli.md)
