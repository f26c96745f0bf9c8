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

{{/* The pod security context of the operator, its helm test and (through the operator) the build pods:
non-root always; the IDs only where set, so a platform that assigns them per namespace can. */}}
{{- define "initramfs-operator.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.runAsUser }}
runAsUser: {{ . }}
{{- end }}
{{- with .Values.runAsGroup }}
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
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
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
# kopf lists and watches builds; the reconciler reads each one fresh and writes only its status.
- apiGroups: [initramfs.dev]
  resources: [initramfsbuilds]
  verbs: [get, list, watch]
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
# Build pods: counted for the concurrency limit, and their termination message is the build result.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# output.pvc: was the claim recreated since the last build? registry.caConfigMap: the registry CA.
- apiGroups: [""]
  resources: [persistentvolumeclaims, configmaps]
  verbs: [get]
# One Event per state change of a build (kopf's own event posting is off).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .Values.rbac.registrySecrets }}
# imagePullSecrets and output.oci.pushSecret: read by name to resolve digests and merged into one
# Secret per build Job for its pod. By name only: never list or watch.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
{{- end }}
{{- end }}
