// Package kubernetes holds phased's Kubernetes manifests: etcd, the
// supervisor and one agent per GPU node, in the namespace phased, applied
// with `kubectl apply -k deploy/kubernetes` (docs/deploy.md).
//
// It has no Go code of its own. Its test reads every manifest and checks
// what kubectl cannot check before a cluster runs them: that the objects
// refer to each other correctly (selectors, ConfigMaps, Secrets, volumes,
// ports), that the supervisor's config parses and names etcd's Service,
// and that the agent's and the supervisor's arguments are flags that
// `supervisor` defines.
package kubernetes
