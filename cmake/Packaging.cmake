# What a distribution package adds to `cmake --install`: bash completion for the loopdio
# command, installed where bash-completion loads it on first use.
install(FILES ${CMAKE_SOURCE_DIR}/packaging/bash-completion/loopdio
        DESTINATION share/bash-completion/completions)
