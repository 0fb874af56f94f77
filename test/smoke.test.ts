import t from 'tap';
import { hello } from '../src/index.js';
t.equal(hello(), 1);
