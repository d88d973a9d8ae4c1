import type { LayerBlob } from '../layer/blob'
import type { Progress } from '../progress'
import { dockerArchiveLayers } from './docker-archive'
import { ociLayers } from './oci-layout'
import { hostPlatform, parsePlatform } from './platform'
import type { ImageRef } from './reference'
import { verifyBlob } from './verify'

/** An image resolved to its layer blobs, topmost first, each blob's digest checked. */
export async function imageLayers(ref: ImageRef, platform: string | null, progress: (label: string) => Progress): Promise<{ layers: LayerBlob[]; description: string }> {
  const resolved = ref.transport === 'oci'
    ? ociLayers(ref.path, ref.ref, platform ? parsePlatform(platform) : hostPlatform())
    : dockerArchiveLayers(ref.path, ref.name)
  const layers: LayerBlob[] = []
  for (const blob of resolved.layers) layers.push(await verifyBlob(blob, progress))
  return { layers: layers.reverse(), description: resolved.description }
}
