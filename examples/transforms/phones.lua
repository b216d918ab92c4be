-- The 2018 Vietnamese renumbering as a table of rules: an 11-digit mobile number's 4-digit
-- prefix became a 3-digit one. Rows whose number matches no rule are left as they are.
local NEW_PREFIX = {
  ["0162"] = "032", ["0163"] = "033", ["0164"] = "034", ["0165"] = "035",
  ["0166"] = "036", ["0167"] = "037", ["0168"] = "038", ["0169"] = "039",
  ["0120"] = "070", ["0121"] = "079", ["0122"] = "077", ["0126"] = "076",
  ["0128"] = "078", ["0123"] = "083", ["0124"] = "084", ["0125"] = "085",
  ["0127"] = "081", ["0129"] = "082", ["0186"] = "056", ["0188"] = "058",
  ["0199"] = "059",
}

function transform(row)
  local phone = row.phone or ""
  if #phone ~= 11 then return nil end
  local prefix = NEW_PREFIX[phone:sub(1, 4)]
  if prefix == nil then return nil end
  return { phone = prefix .. phone:sub(5) }
end
