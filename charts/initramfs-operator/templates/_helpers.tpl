{{/* Chart name, overridable. */}}
{{- define "initramfs-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: the release name alone when it already holds the chart name. */}}
{{- define "initramfs-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "initramfs-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "initramfs-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "initramfs-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The selector labels as a label selector string, name=value,... */}}
{{- define "initramfs-operator.selector" -}}
{{- $pairs := list }}
{{- range $key, $value := include "initramfs-operator.selectorLabels" . | fromYaml }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* Labels of every object but the selector labels, which only the operator's objects carry. */}}
{{- define "initramfs-operator.commonLabels" -}}
helm.sh/chart: {{ include "initramfs-operator.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: initramfs-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "initramfs-operator.labels" -}}
{{ include "initramfs-operator.commonLabels" . }}
app.kubernetes.io/name: {{ include "initramfs-operator.name" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "initramfs-operator.crdLabels" -}}
{{ include "initramfs-operator.commonLabels" . }}
app.kubernetes.io/name: {{ include "initramfs-operator.name" . }}
app.kubernetes.io/component: crds
{{- end }}

{{/* Not the operator's selector labels: the Deployment would adopt the test pod, the Service route to it. */}}
{{- define "initramfs-operator.testLabels" -}}
{{ include "initramfs-operator.commonLabels" . }}
app.kubernetes.io/name: {{ include "initramfs-operator.name" . }}-test
app.kubernetes.io/component: test
{{- end }}

{{/* A user or group ID value as digits, or "" when null. (int64: numbers from values files are floats,
which print as 1e+09.) */}}
{{- define "initramfs-operator.id" -}}
{{- if not (kindIs "invalid" .) }}{{ int64 . }}{{ end }}
{{- end }}

{{/* The pod security context of the operator and its helm test (the build pods get the same IDs through
the operator's environment): non-root always; the IDs only where set, so a platform that assigns them
per namespace can. */}}
{{- define "initramfs-operator.podSecurityContext" -}}
runAsNonRoot: true
{{- with include "initramfs-operator.id" .Values.runAsUser }}
runAsUser: {{ . }}
{{- end }}
{{- with include "initramfs-operator.id" .Values.runAsGroup }}
runAsGroup: {{ . }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "initramfs-operator.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{- define "initramfs-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "initramfs-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "initramfs-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
What the operator does with the API, and nothing more (read operator/initramfs_operator/kube/reconcile.py
and controller.py before changing it). The same rules go into the ClusterRole (all namespaces) or
into a Role in each watched namespace.
Not needed, so not granted: namespaces (kopf lists them only when not cluster-wide, and falls back to
the exact names it was given), customresourcedefinitions (kopf's runtime scanning for new CRDs is
optional; the CRD is installed before the operator), kopf peering objects (it runs standalone).
*/}}
{{- define "initramfs-operator.rules" -}}
# kopf lists and watches builds; the reconciler writes their status, and patches a build only to add or
# remove its cleanup finalizer (deletionPolicy: Delete, output.retention).
- apiGroups: [initramfs.dev]
  resources: [initramfsbuilds]
  verbs: [get, list, watch, patch]
- apiGroups: [initramfs.dev]
  resources: [initramfsbuilds/status]
  verbs: [patch]
# Build Jobs are owned by their build with blockOwnerDeletion; where the
# OwnerReferencesPermissionEnforcement admission plugin is on, that needs "update" on the owner's
# finalizers. Custom resources have no finalizers endpoint, so this grants no API access by itself.
- apiGroups: [initramfs.dev]
  resources: [initramfsbuilds/finalizers]
  verbs: [update]
# Build Jobs: kopf watches them; the reconciler creates, adopts and deletes superseded ones.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# Build pods (label-selected): watched for the concurrency limit, why a build is stuck, and their
# termination message, which is the build result.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# output.pvc: was the claim recreated since the last build? registry.caConfigMap: the registry CA.
- apiGroups: [""]
  resources: [persistentvolumeclaims, configmaps]
  verbs: [get]
# One Event per state change of a build (kopf's own event posting is off); Warning Events are
# watched (the API server filters on type) for why a build pod or Job is stuck (FailedMount, FailedCreate).
- apiGroups: [""]
  resources: [events]
  verbs: [create, list, watch]
{{- if .Values.rbac.registrySecrets }}
# imagePullSecrets and output.oci.pushSecret: read by name to resolve digests (the build pod mounts
# them itself). By name only: never list, watch or create.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
{{- if .Values.delivery.enabled }}
# The delivery agents' reports, summed into status.delivery (nodes: delivery-agent.yaml).
- apiGroups: [initramfs.dev]
  resources: [initramfsdeliveries]
  verbs: [list, watch]
# What the agents hold: one release per delivering build, written (server-side apply, which creates it
# the first time) only when it changes, deleted when the build stops delivering.
- apiGroups: [initramfs.dev]
  resources: [initramfsreleases]
  verbs: [list, watch, create, patch, delete]
{{- end }}
{{- end }}

{{/* The delivery agent's namespace: delivery.namespace, else <release namespace>-delivery. */}}
{{- define "initramfs-operator.deliveryNamespace" -}}
{{- .Values.delivery.namespace | default (printf "%s-delivery" .Release.Namespace | trunc 63 | trimSuffix "-") }}
{{- end }}

{{- define "initramfs-operator.deliverySelectorLabels" -}}
app.kubernetes.io/name: {{ include "initramfs-operator.name" . }}-delivery-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "initramfs-operator.deliveryLabels" -}}
{{ include "initramfs-operator.commonLabels" . }}
app.kubernetes.io/name: {{ include "initramfs-operator.name" . }}-delivery-agent
app.kubernetes.io/component: delivery-agent
{{- end }}

{{/* What the delivery agent may do in a namespace it serves (README "Delivery to VM hosts"). */}}
{{- define "initramfs-operator.deliveryNamespacedRules" -}}
# What to hold: the operator's InitramfsRelease of each delivering build. Not the builds themselves.
- apiGroups: [initramfs.dev]
  resources: [initramfsreleases]
  verbs: [get, list, watch]
# Its own reports: server-side applied, listed once at start, deleted when it stops serving a build
# (only its own node's: the ValidatingAdmissionPolicy in delivery-agent.yaml). No Secrets or ConfigMaps
# here: only the ones the values name (delivery.pullSecret, readableSecrets, readableConfigMaps).
- apiGroups: [initramfs.dev]
  resources: [initramfsdeliveries]
  verbs: [get, list, create, patch, delete]
{{- end }}

{{/* The names of a list of references ([{name: a}, {name: b}]), comma-separated. */}}
{{- define "initramfs-operator.names" -}}
{{- $names := list -}}
{{- range . }}{{ $names = append $names .name }}{{ end -}}
{{- join "," $names -}}
{{- end }}

{{/* NetworkPolicy egress rules: DNS if allowed, the API server if `apiServer`, and the registries. */}}
{{- define "initramfs-operator.egress" -}}
{{- $np := .values.networkPolicy -}}
{{- if $np.dns }}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}
{{- if .apiServer }}
- to:
    {{- range $np.apiServer.cidrs }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
  ports:
    {{- range $np.apiServer.ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end }}
- {{- with $np.registries.cidrs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
  {{- end }}
  ports:
    {{- range $np.registries.ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end }}
