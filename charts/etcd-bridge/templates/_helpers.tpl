{{/* The chart name, or nameOverride. */}}
{{- define "etcd-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name: the release name, with the chart name unless it is in it. */}}
{{- define "etcd-bridge.fullname" -}}
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

{{- define "etcd-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The recommended labels, on every object of the chart. */}}
{{- define "etcd-bridge.labels" -}}
helm.sh/chart: {{ include "etcd-bridge.chart" . }}
{{ include "etcd-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: etcd-bridge
{{- end }}

{{/* What the Deployment, the Service, the PDB and the NetworkPolicy select pods by. */}}
{{- define "etcd-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "etcd-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "etcd-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "etcd-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where Services, EndpointSlices and the Lease go. */}}
{{- define "etcd-bridge.targetNamespace" -}}
{{- default .Release.Namespace .Values.targetNamespace }}
{{- end }}

{{- define "etcd-bridge.instance" -}}
{{- default .Release.Name .Values.instance }}
{{- end }}

{{- define "etcd-bridge.leaseName" -}}
{{- default (printf "etcd-bridge-%s" (include "etcd-bridge.instance" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "etcd-bridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Where the etcd TLS Secret is mounted. */}}
{{- define "etcd-bridge.tlsDir" -}}
/etc/etcd-bridge/etcd-tls
{{- end }}

{{/* The write-back policy as the --writeback-policy flag wants it: NS_GLOB:SVC_GLOB,... */}}
{{- define "etcd-bridge.writebackPolicy" -}}
{{- $rules := list }}
{{- range .Values.writeback.policy }}
{{- $rules = append $rules (printf "%s:%s" .namespaces .services) }}
{{- end }}
{{- join "," $rules }}
{{- end }}

{{/*
The TCP ports of etcd.endpoints, one per line (2379 for a URL without a port), for the
NetworkPolicy.
*/}}
{{- define "etcd-bridge.etcdPorts" -}}
{{- $ports := list }}
{{- range .Values.etcd.endpoints }}
{{- $hostport := trimSuffix "/" (regexReplaceAll "^https?://" . "") }}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $hostport) }}
{{- $ports = append $ports (default "2379" $port) }}
{{- end }}
{{- if .Values.sources.enabled }}
{{- range .Values.sources.etcdPorts }}
{{- $ports = append $ports (toString .) }}
{{- end }}
{{- end }}
{{- join "\n" (uniq $ports) }}
{{- end }}

{{/* A duration of the form the schema allows (10ms, 15s, 2m, 1h), in whole seconds. */}}
{{- define "etcd-bridge.seconds" -}}
{{- $n := regexFind "^[0-9]+" . | int }}
{{- if hasSuffix "ms" . }}{{ div $n 1000 }}
{{- else if hasSuffix "s" . }}{{ $n }}
{{- else if hasSuffix "m" . }}{{ mul $n 60 }}
{{- else if hasSuffix "h" . }}{{ mul $n 3600 }}
{{- else }}{{ $n }}
{{- end }}
{{- end }}

{{/*
What the schema cannot say: rules across fields. Each failure names the values to change.
*/}}
{{- define "etcd-bridge.validate" -}}
{{- $tls := .Values.etcd.tls }}
{{- range .Values.etcd.endpoints }}
{{- if and $tls.enabled (hasPrefix "http://" .) }}
{{- fail (printf "etcd.endpoints: %s is plain http:// but etcd.tls.enabled is true; use https:// URLs" .) }}
{{- end }}
{{- if and (not $tls.enabled) (hasPrefix "https://" .) }}
{{- fail (printf "etcd.endpoints: %s is https:// but etcd.tls.enabled is false; set etcd.tls.enabled=true and etcd.tls.secretName to a Secret with the CA (%s)" . $tls.caKey) }}
{{- end }}
{{- end }}
{{- if and $tls.enabled (not $tls.secretName) }}
{{- fail "etcd.tls.secretName: required when etcd.tls.enabled is true (a Secret in the release namespace with the CA, and the client certificate and key)" }}
{{- end }}
{{- if ne (empty $tls.certKey) (empty $tls.keyKey) }}
{{- fail "etcd.tls.certKey and etcd.tls.keyKey go together: set both (client certificate) or neither (server-only TLS)" }}
{{- end }}
{{- range $fa := .Values.etcd.prefixes }}
{{- range $fb := $.Values.etcd.prefixes }}
{{- $a := regexReplaceAll "=[a-z-]*$" $fa "" }}
{{- $b := regexReplaceAll "=[a-z-]*$" $fb "" }}
{{- if and (ne $a $b) (hasPrefix $a $b) }}
{{- fail (printf "etcd.prefixes: %s contains %s; a key under %s would be read twice, keep only one of them" $a $b $b) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (not .Values.leaderElection.enabled) (gt (int .Values.replicas) 1) }}
{{- fail (printf "leaderElection.enabled is false with replicas=%d: every replica would write; set replicas=1 or enable leader election" (int .Values.replicas)) }}
{{- end }}
{{- $lease := .Values.leaderElection.leaseDuration | default "15s" }}
{{- $leaseSecs := include "etcd-bridge.seconds" $lease | int }}
{{- if and .Values.leaderElection.enabled (lt $leaseSecs 2) }}
{{- fail (printf "leaderElection.leaseDuration: %s is too short; at least 2s" $lease) }}
{{- end }}
{{- if .Values.writeback.enabled }}
{{- $ttl := .Values.writeback.leaseTTL | default "30s" }}
{{- if le (include "etcd-bridge.seconds" $ttl | int) $leaseSecs }}
{{- fail (printf "writeback.leaseTTL: %s must exceed leaderElection.leaseDuration (%s), so a new leader re-puts the registrations before the old leader's etcd lease expires" $ttl $lease) }}
{{- end }}
{{- end }}
{{- end }}

{{/* What importing into a namespace needs there: its projected Services and EndpointSlices, and
Events on them. In targetNamespace, and in each of sources.targetNamespaces. */}}
{{- define "etcd-bridge.importRules" -}}
# Projected Services: read all of them (a user's Service of the same name is a conflict, left
# alone), create and server-side apply its own, delete its own when the last registration goes.
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
# Their EndpointSlices, likewise.
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch, create, patch, delete]
# Warning Events on conflicts (kube-rs's recorder writes events.k8s.io/v1 only).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
