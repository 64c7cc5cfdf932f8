{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "xbackend-controller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. A release named like the chart is not
repeated ("xbackend-controller", not "xbackend-controller-xbackend-controller").
*/}}
{{- define "xbackend-controller.fullname" -}}
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

{{- define "xbackend-controller.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels the pods are selected by: never change them in an upgrade. */}}
{{- define "xbackend-controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "xbackend-controller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "xbackend-controller.labels" -}}
helm.sh/chart: {{ include "xbackend-controller.chart" . }}
{{ include "xbackend-controller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: xbackend-controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "xbackend-controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "xbackend-controller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespace of the leader election Lease (and of the Role that grants it). */}}
{{- define "xbackend-controller.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{- define "xbackend-controller.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* --metrics-addr: IPv6 addresses get brackets. */}}
{{- define "xbackend-controller.metricsAddr" -}}
{{- $host := toString .Values.metrics.bindAddress }}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}
{{- printf "[%s]:%d" $host (int .Values.metrics.port) }}
{{- else }}
{{- printf "%s:%d" $host (int .Values.metrics.port) }}
{{- end }}
{{- end }}

{{/* --egress-cluster: controller.egress.cluster, else what the deprecated allowCluster means, else "" (each class by its preset). */}}
{{- define "xbackend-controller.egressCluster" -}}
{{- $egress := .Values.controller.egress }}
{{- if $egress.cluster }}{{ $egress.cluster }}
{{- else if eq (toString $egress.allowCluster) "true" }}all
{{- else if eq (toString $egress.allowCluster) "false" }}none
{{- end }}
{{- end }}

{{/* "true" when Services and EndpointSlices are read: an engine, and a cluster mode that may be routes. */}}
{{- define "xbackend-controller.readsServices" -}}
{{- if ne .Values.controller.egress.policy "off" }}
{{- if not (has (include "xbackend-controller.egressCluster" .) (list "all" "none")) }}true{{ end }}
{{- end }}
{{- end }}

{{/* "true" when controller.egress.policy is an admin-tier engine (cluster-scoped objects), else "". */}}
{{- define "xbackend-controller.adminEngine" -}}
{{- if has .Values.controller.egress.policy (list "adminnetworkpolicy" "clusternetworkpolicy") }}true{{ end }}
{{- end }}

{{/* The `run` arguments, one flag per value. */}}
{{- define "xbackend-controller.args" -}}
- run
- {{ printf "--controller-name=%s" .Values.controller.name | quote }}
{{- range .Values.controller.gatewayClasses }}
- {{ printf "--gateway-class=%s" . | quote }}
{{- end }}
{{- range .Values.controller.clusterDomains }}
- {{ printf "--cluster-domain=%s" . | quote }}
{{- end }}
{{- range .Values.controller.allowHostnames }}
- {{ printf "--allow-hostname=%s" . | quote }}
{{- end }}
{{- range .Values.controller.denyHostnames }}
- {{ printf "--deny-hostname=%s" . | quote }}
{{- end }}
{{- if .Values.controller.requireTLS }}
- --require-tls
{{- end }}
{{- range .Values.controller.allowPrivateSuffixes }}
- {{ printf "--allow-private-suffix=%s" . | quote }}
{{- end }}
{{- range .Values.controller.denyCIDRs }}
- {{ printf "--deny-cidr=%s" . | quote }}
{{- end }}
{{- range .Values.controller.allowCIDRs }}
- {{ printf "--allow-cidr=%s" . | quote }}
{{- end }}
{{- $engine := .Values.controller.egress.policy }}
{{- if ne $engine "off" }}
{{- if not .Values.controller.dns.check }}
{{- fail (printf "controller.egress.policy=%s needs controller.dns.check=true: the policies allow the addresses names resolve to" $engine) }}
{{- end }}
{{- $admin := include "xbackend-controller.adminEngine" . }}
{{- if and $admin .Values.controller.egress.namespaces }}
{{- fail (printf "controller.egress.namespaces is for controller.egress.policy=networkpolicy only: %s objects are cluster-scoped (a ClusterRole rule), so there is no namespace to keep them in" $engine) }}
{{- end }}
- {{ printf "--egress-policy=%s" $engine | quote }}
{{- if $admin }}
- {{ printf "--egress-admin-priority=%d" (int .Values.controller.egress.adminPriority) | quote }}
{{- end }}
{{- $cluster := include "xbackend-controller.egressCluster" . }}
{{- if $cluster }}
- {{ printf "--egress-cluster=%s" $cluster | quote }}
{{- end }}
{{- range $class, $needs := .Values.controller.egress.needs }}
{{- range $needs }}
- {{ printf "--egress-needs=%s=%s" $class . | quote }}
{{- end }}
{{- end }}
- {{ printf "--egress-address-hold=%s" .Values.controller.egress.addressHold | quote }}
- {{ printf "--egress-max-addresses-per-host=%d" (int .Values.controller.egress.maxAddressesPerHost) | quote }}
{{- range .Values.controller.egress.dnsCIDRs }}
- {{ printf "--egress-dns-cidr=%s" . | quote }}
{{- end }}
{{- range $class, $plane := .Values.controller.egress.dataPlanes }}
- {{ printf "--egress-data-plane=%s=%s" $class $plane | quote }}
{{- end }}
{{- range .Values.controller.egress.namespaces }}
- {{ printf "--egress-namespace=%s" . | quote }}
{{- end }}
{{- end }}
{{- if .Values.controller.dns.check }}
{{- range .Values.controller.dns.servers }}
- {{ printf "--dns-server=%s" . | quote }}
{{- end }}
{{- with .Values.controller.dns.service }}
- {{ printf "--dns-service=%s" . | quote }}
{{- end }}
- {{ printf "--dns-min-ttl=%d" (int .Values.controller.dns.minTTL) | quote }}
- {{ printf "--dns-max-ttl=%d" (int .Values.controller.dns.maxTTL) | quote }}
{{- else }}
{{- if .Values.controller.dns.service }}
{{- fail "controller.dns.service needs controller.dns.check=true: it names the DNS servers the check asks" }}
{{- end }}
- --no-dns-check
{{- end }}
- {{ printf "--metrics-addr=%s" (include "xbackend-controller.metricsAddr" .) | quote }}
{{- if .Values.leaderElection.enabled }}
- --leader-election
- {{ printf "--leader-election-namespace=%s" (include "xbackend-controller.leaseNamespace" .) | quote }}
- {{ printf "--lease-name=%s" .Values.leaderElection.leaseName | quote }}
- {{ printf "--lease-duration=%d" (int .Values.leaderElection.leaseDuration) | quote }}
{{- else }}
- --no-leader-election
{{- end }}
- {{ printf "--concurrency=%d" (int .Values.controller.concurrency) | quote }}
- {{ printf "--resync-interval=%d" (int .Values.controller.resyncInterval) | quote }}
- {{ printf "--log-format=%s" .Values.controller.logFormat | quote }}
{{- range .Values.controller.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
An alert's labels: its severity plus metrics.prometheusRule.alertLabels (which
win, so a team may map severities its own way). Argument: (list rule severity).
*/}}
{{- define "xbackend-controller.alertLabels" -}}
labels:
  {{- toYaml (merge (dict) (index . 0).alertLabels (dict "severity" (index . 1))) | nindent 2 }}
{{- end }}

{{/*
runbook_url of an alert, pointing at its section of deploy/README.md, when
metrics.prometheusRule.runbookBaseURL is set; nothing otherwise. Starts with
its own newline and the annotations' indentation. Argument: (list rule alert).
*/}}
{{- define "xbackend-controller.runbook" -}}
{{- with (index . 0).runbookBaseURL }}
{{- printf "runbook_url: %s" (printf "%s#%s" . (lower (index $ 1)) | quote) | nindent 12 }}
{{- end }}
{{- end }}
