/**
 * Sessions belong to the credential that made them. Every session id the
 * cache layer stores is `<namespace>/<name>`: the namespace is a hash of the
 * API key (one shared namespace when keys are off), the name is what the
 * client sees (its x-session-id, prompt_cache_key or a generated id). Lookups
 * build the scoped id from the caller's namespace, so another key's session is
 * simply not there, and the prefix index is kept per namespace, so automatic
 * matching never crosses one.
 */

/** The namespace of every request when API keys are off. */
export const OPEN_NAMESPACE = 'open';

/** The id the cache layer stores a client's session under. */
export function scopedId(namespace: string, name: string): string {
  return `${namespace}/${name}`;
}

/** The client-visible name of a scoped id. Names never contain '/', namespaces neither. */
export function nameOf(id: string): string {
  return id.slice(id.indexOf('/') + 1);
}

/** The namespace of a scoped id (ids made before namespaces existed count as open). */
export function namespaceOf(id: string): string {
  const i = id.indexOf('/');
  return i < 0 ? OPEN_NAMESPACE : id.slice(0, i);
}
