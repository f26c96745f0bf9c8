-- Argo CD health check for initramfs.dev/InitramfsBuild.
--
-- Install it as `resource.customizations.health.initramfs.dev_InitramfsBuild` in the argocd-cm
-- ConfigMap (see the README, "Health in Argo CD, Flux and kubectl wait"). It gives the verdicts
-- kstatus computes (what Flux and `kubectl wait`-style tools use), mapped to Argo CD's words:
--   InProgress -> Progressing, Current -> Healthy, Failed -> Degraded;
-- and a paused build (spec.suspend: Ready's reason Suspended, nothing in flight, nothing Stalled)
-- is Suspended, with or without an output (kstatus: Current with one, InProgress without).
-- A build the operator has not looked at yet reads status.observedGeneration 0 (the CRD's
-- default): Progressing, as for kstatus. Without any status (a CRD from before that default) it
-- is Progressing here too, where kstatus, seeing no conditions, would say Current.

local hs = {}

local function condition(conditions, type)
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function explain(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the initramfs operator to pick up the build"
  return hs
end
if status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the initramfs operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local conditions = status.conditions or {}
local stalled = condition(conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = explain(stalled)
  return hs
end
local ready = condition(conditions, "Ready")
local reconciling = condition(conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  if ready ~= nil and ready.status == "False" then
    -- No output yet: Ready's reason is the most specific one (Queued, Building, or a failure being
    -- retried such as ImagePullFailed or Unschedulable).
    hs.message = explain(ready)
  else
    -- A refresh rebuild: the previous output stays Ready until the new one lands.
    hs.message = explain(reconciling)
  end
  return hs
end
if ready ~= nil and ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = explain(ready)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = explain(ready)
  return hs
end
hs.status = "Progressing"
if ready ~= nil then
  hs.message = explain(ready)
else
  hs.message = "Waiting for the Ready condition"
end
return hs
