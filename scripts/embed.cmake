# Writes a C file that holds the bytes of a file as a NUL-terminated array:
#   cmake -DIN=page.html -DOUT=page.c -DSYMBOL=name -P scripts/embed.cmake
# gives `const char name[]` (the bytes, then a NUL) and `const size_t
# name_len` (without the NUL). Used for the status page
# (handlers/admin/status.html), so that the server needs no file at run time.
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" hex_len)
math(EXPR len "${hex_len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
# 16 bytes a line keeps the file readable by tools.
string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){16})" "\\1\n" bytes "${bytes}")
get_filename_component(name "${IN}" NAME)
file(WRITE "${OUT}.tmp"
  "/* Generated from ${name} by scripts/embed.cmake: do not edit. */\n"
  "#include <stddef.h>\n"
  "const char ${SYMBOL}[] = {\n${bytes}0x00};\n"
  "const size_t ${SYMBOL}_len = ${len};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
