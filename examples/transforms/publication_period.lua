-- Parses a hand-written publication date into {start, end, approximate}.
--   "1987" -> 1987..1987        "c1950", "ca. 1820", "[c1972]" -> approximate
--   "[1999?]" -> approximate    "1990-1995" -> 1990..1995     "1850s" -> 1850..1859
--   "1999-01" is a year and a month, not a range: 1999..1999
local function period(text)
  local s = godwit.trim(text):gsub("^%[", ""):gsub("%]$", ""):gsub("%.$", "")
  local approximate = false
  if s:find("?", 1, true) then approximate = true; s = s:gsub("%?", "") end
  local circa = s:match("^ca?%.?%s*(.*)$")
  if circa then approximate = true; s = circa end
  local decade = s:match("^(%d%d%d)0s$")
  if decade then
    local start = tonumber(decade) * 10
    return { start = start, ["end"] = start + 9, approximate = approximate }
  end
  local from, to = s:match("^(%d%d%d%d)%s*%-%s*(%d%d%d%d)$")
  if from then
    return { start = tonumber(from), ["end"] = tonumber(to), approximate = approximate }
  end
  local year = s:match("^(%d%d%d%d)$") or s:match("^(%d%d%d%d)%-%d%d$")
  if year then
    return { start = tonumber(year), ["end"] = tonumber(year), approximate = approximate }
  end
  return nil
end

function transform(row)
  local published = row.details.published
  if type(published) ~= "string" then return nil end
  local p = period(published)
  if p == nil then error("cannot read the publication date " .. string.format("%q", published)) end
  row.details.publicationPeriod = p
  return { details = row.details }
end
