"""The 2018 Vietnamese renumbering as a godwit transform program (the Lua version is phones.lua).

godwit starts this once per worker, writes one JSON object per row on stdin and reads one JSON
line per row back: the columns to change, null to leave the row, or {"error": "..."}.
"""
import json
import sys

NEW_PREFIX = {"0162": "032", "0163": "033", "0164": "034", "0165": "035", "0166": "036",
              "0167": "037", "0168": "038", "0169": "039", "0120": "070", "0121": "079",
              "0122": "077", "0126": "076", "0128": "078", "0123": "083", "0124": "084",
              "0125": "085", "0127": "081", "0129": "082", "0186": "056", "0188": "058",
              "0199": "059"}

for line in sys.stdin:
    phone = json.loads(line)["phone"] or ""
    new = NEW_PREFIX.get(phone[:4]) if len(phone) == 11 else None
    print(json.dumps({"phone": new + phone[4:]} if new else None), flush=True)
