-- includes/globs.lua: scope globs (* and ?) as the claim script matches them, in time linear in the scope's length
-- times the glob's: never a backtracking Lua pattern with several ".*", which a long scope could make run for
-- hours inside Redis. controls.py compiles a glob into its segments (the parts between its stars), each a Lua
-- pattern without a star of its own but for one UTF-8 character's continuation bytes: "?" is one character.

-- The segments of a compiled glob (separated by tabs, which no scope holds).
local function glob_segments(compiled)
  local segments = {}
  for segment in string.gmatch(compiled .. '\t', '([^\t]*)\t') do segments[#segments + 1] = segment end
  return segments
end

-- The compiled globs of a text of one per line, each as its segments.
local function glob_list(text)
  local globs = {}
  for line in string.gmatch(text, '[^\n]+') do globs[#globs + 1] = glob_segments(line) end
  return globs
end

-- Whether `scope` matches the glob of `segments`: the first anchored at the start, the last at the end, the ones
-- between found leftmost in turn (which is exact for globs, whose segments each match a fixed number of characters).
local function glob_match(scope, segments)
  local count = #segments
  if count == 1 then return string.find(scope, '^' .. segments[1] .. '$') ~= nil end
  local _, stop = string.find(scope, '^' .. segments[1])
  if not stop then return false end
  local position = stop + 1
  for i = 2, count - 1 do
    if segments[i] ~= '' then
      _, stop = string.find(scope, segments[i], position)
      if not stop then return false end
      position = stop + 1
    end
  end
  return string.find(scope, segments[count] .. '$', position) ~= nil
end

-- Whether `scope` matches any glob of `globs` (glob_list).
local function glob_match_any(scope, globs)
  for _, segments in ipairs(globs) do
    if glob_match(scope, segments) then return true end
  end
  return false
end
