/** Writes openapi.yaml (in the working directory) from the route schemas: `npm run openapi`. */
import { writeFile } from 'node:fs/promises';
import { renderOpenApi } from './openapi.js';

await writeFile('openapi.yaml', await renderOpenApi());
