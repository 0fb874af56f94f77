export async function startService(): Promise<void> {
  throw new Error('not yet');
}
