local hs = {}
local function condition(conditions, type)
  for _, c in ipairs(conditions or {}) do
    if c.type == type then
      return c
    end
  end
  return nil
end
local function describe(c)
  local text = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end
-- Workloads of spec.target.rolloutRestart the operator could not restart: named in the message
-- of a Healthy resource. Not Degraded: its Secret holds the current credential, and a Deployment
-- applied in a later sync wave is missing only until that wave.
local function restarts(entries)
  local text = ""
  for _, w in ipairs(entries or {}) do
    if w.reason ~= nil then
      text = text .. "; rolloutRestart: " .. (w.kind or "") .. " " .. (w.name or "") .. " " .. w.reason
    end
  end
  return text
end
-- A ClusterMendixCredential's: how many, and the first.
local function cluster_restarts(failures, count)
  if count == nil or count == 0 then
    return ""
  end
  local text = "; rolloutRestart: " .. count .. " failed"
  local first = (failures or {})[1]
  if first ~= nil then
    text = text .. " (" .. (first.kind or "") .. " " .. (first.name or "") .. " in " ..
      (first.namespace or "") .. " " .. (first.reason or "") .. ")"
  end
  return text
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end
local observed = obj.status.observedGeneration
if observed ~= nil and obj.metadata.generation ~= nil and observed < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on generation " .. obj.metadata.generation
  return hs
end

local ready = condition(obj.status.conditions, "Ready")
local valid = condition(obj.status.conditions, "TokenValid")
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end
if valid ~= nil and valid.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(valid)
  return hs
end
if ready ~= nil and ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = describe(ready)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  local synced = "Secret " .. (obj.status.secretName or "") .. " synced"
  -- A ClusterMendixCredential: in how many of the selected namespaces.
  if obj.status.namespaces ~= nil then
    synced = synced .. " in " .. obj.status.namespaces .. " namespaces"
  end
  if valid ~= nil then
    hs.message = synced .. "; TokenValid " .. valid.status .. " (" .. describe(valid) .. ")"
  else
    hs.message = synced
  end
  hs.message = hs.message .. restarts(obj.status.rolloutRestart)
  hs.message = hs.message ..
    cluster_restarts(obj.status.rolloutRestartFailures, obj.status.rolloutRestartFailureCount)
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
