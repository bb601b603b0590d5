-- pandoc filter that turns one of docs/*.md into a man page in nbdkit's convention. The first
-- heading, "# NAME(SECTION)" or "# NAME(SECTION): WHAT IT IS", is the page's name and section;
-- "##" headings become its sections (.SH, in capitals) and "###" its subsections (.SS).
-- Links to the other manuals become man page references (metadata "manrefs": file -> page).

-- The page's title line; an error (and a failed build) when the document has none.
local function parse_title(block)
  if not block or block.t ~= "Header" or block.level ~= 1 then
    error("the document must start with a heading '# NAME(SECTION)' or "
          .. "'# NAME(SECTION): WHAT IT IS'")
  end
  local text = pandoc.utils.stringify(block.content)
  local n, s, rest = text:match("^([%w%.%-_]+)%((%d%a*)%)(.*)$")
  if not n then
    error("first heading '" .. text .. "' is not 'NAME(SECTION)' or 'NAME(SECTION): WHAT IT IS'")
  end
  return n, s, rest:match("^%s*:%s*(.-)%s*$") or ""
end

-- "## Exit status" -> .SH EXIT STATUS; "### ..." -> .SS. Code in a heading stays as written.
local function shift_heading(h)
  if h.level == 1 then
    error("a second first-level heading: '" .. pandoc.utils.stringify(h.content) .. "'")
  end
  h.level = h.level - 1
  if h.level == 1 then
    h.content = pandoc.walk_inline(pandoc.Span(h.content), {
      Str = function(s) return pandoc.Str(s.text:upper()) end,
    }).content
  end
  return h
end

local function has_section(blocks, title)
  for _, b in ipairs(blocks) do
    if b.t == "Header" and b.level == 1 and pandoc.utils.stringify(b.content) == title then
      return true
    end
  end
  return false
end

-- A link to another manual: "loopdio.md" -> nbdkit-loopdio-plugin(1). A link to a file that
-- has no page keeps its text (a relative link means nothing to man).
local function link_to_page(manrefs)
  return function(link)
    local target = link.target
    if target:match("^%a[%w+.-]*:") or target:match("^#") then return nil end
    local file = target:gsub("#.*$", ""):match("([^/]+)$")
    local page = file and manrefs[file]
    if not page then return link.content end
    local pname, psection = page:match("^(.-)(%(.*%))$")
    local ref = { pandoc.Strong({ pandoc.Str(pname) }), pandoc.Str(psection) }
    local text = pandoc.utils.stringify(link.content)
    if text == file or text == target then
      return ref
    end
    local out = link.content
    out:insert(pandoc.Space())
    out:insert(pandoc.Str("("))
    out:extend(ref)
    out:insert(pandoc.Str(")"))
    return out
  end
end

local function inlines_of(blocks)
  if #blocks == 1 and (blocks[1].t == "Plain" or blocks[1].t == "Para") then
    return blocks[1].content
  end
  return pandoc.List({ pandoc.Str(pandoc.utils.stringify(blocks)) })
end

-- A table becomes a list, the way nbdkit's pages (pod's =item) show options: the first
-- column is the item, and each other column a "header: value" line, except a last column
-- headed "meaning" (or "what", "message"), which is the item's text. (tbl's tables get
-- wider than an 80-column page as soon as a cell is long, and man warns.)
local kTextHeaders = { meaning = true, what = true, message = true }

local function table_to_list(tbl)
  -- GitHub's tables take "\|" in a code span as "|"; pandoc keeps the backslash.
  tbl = pandoc.walk_block(tbl, {
    Code = function(c) c.text = c.text:gsub("\\|", "|"); return c end,
  })
  local headers = {}
  local head = tbl.head.rows[1]
  for i, cell in ipairs(head and head.cells or {}) do
    headers[i] = pandoc.utils.stringify(cell.contents)
  end
  local items = pandoc.List()
  for _, body in ipairs(tbl.bodies) do
    for _, row in ipairs(body.body) do
      local cells, text, lines = row.cells, pandoc.List(), pandoc.List()
      local last = #cells
      if #cells == 2 or kTextHeaders[(headers[last] or ""):lower()] then last = #cells - 1 end
      for i = 2, last do
        if pandoc.utils.stringify(cells[i].contents) ~= "" then
          -- .br, not a LineBreak: pandoc's man writer ends the item's indent at one.
          if #lines > 0 then lines:insert(pandoc.RawInline("man", "\n.br\n")) end
          lines:insert(pandoc.Emph({ pandoc.Str((headers[i] or "") .. ":") }))
          lines:insert(pandoc.Space())
          lines:extend(inlines_of(cells[i].contents))
        end
      end
      if #lines > 0 then text:insert(pandoc.Para(lines)) end
      if last < #cells then text:extend(cells[#cells].contents) end
      items:insert({ inlines_of(cells[1].contents), { text } })
    end
  end
  return pandoc.DefinitionList(items)
end

function Pandoc(doc)
  local name, section, what = parse_title(doc.blocks[1])
  local blocks = pandoc.List()
  for i = 2, #doc.blocks do
    local b = doc.blocks[i]
    blocks:insert(b.t == "Header" and shift_heading(b) or b)
  end

  -- Text before the first section is the page's description.
  if #blocks > 0 and not (blocks[1].t == "Header" and blocks[1].level == 1) then
    if has_section(blocks, "DESCRIPTION") then
      error("text before the first section, and a DESCRIPTION section as well")
    end
    blocks:insert(1, pandoc.Header(1, "DESCRIPTION"))
  end
  -- whatis(1) and apropos(1) read the NAME section: "name - what it is".
  if not has_section(blocks, "NAME") then
    if what == "" then
      error("no NAME section, and no ': WHAT IT IS' in the first heading to make one")
    end
    blocks:insert(1, pandoc.Para({ pandoc.Str(name), pandoc.Space(), pandoc.Str("-"),
                                   pandoc.Space(), pandoc.Str(what) }))
    blocks:insert(1, pandoc.Header(1, "NAME"))
  end

  local manrefs = {}
  for file, page in pairs(doc.meta.manrefs or {}) do
    manrefs[file] = pandoc.utils.stringify(page)
  end
  doc.meta.manrefs = nil
  doc.blocks = pandoc.walk_block(pandoc.Div(blocks),
                                 { Link = link_to_page(manrefs), Table = table_to_list }).content
  doc.meta.title = name:upper()
  doc.meta.section = section
  return doc
end
