// Starts the roles ROLES names in one process (default: web, worker, and each chat whose token is set).
import { startRoles } from './roles.ts';

await startRoles();
