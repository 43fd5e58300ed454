package transfer

import "github.com/phased/phased/sdk"

// The room types of the phase contract, under the names this package has
// always used: a Manager's rooms report them.
type (
	Status   = sdk.RoomStatus
	Role     = sdk.Role
	RoomInfo = sdk.RoomInfo
)

// The statuses and roles of a room (see sdk.RoomStatus and sdk.Role).
const (
	Failed          = sdk.StatusFailed
	Bootstrapping   = sdk.StatusBootstrapping
	WaitingForInput = sdk.StatusWaitingForInput
	Transferring    = sdk.StatusTransferring
	Success         = sdk.StatusSuccess

	Sender   = sdk.RoleSender
	Receiver = sdk.RoleReceiver
)
